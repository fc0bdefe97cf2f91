/**
 * Certificates for the TLS-intercepting egress proxy: a per-run certificate authority that the guest
 * is told to trust, and the leaf certificates the proxy presents in its name, one per host the guest
 * connects to. Node can parse and verify X.509 certificates but not create them, so this module writes
 * them by hand: a few DER encoders (X.690) assemble an RFC 5280 TBSCertificate, which is signed with
 * ECDSA P-256 / SHA-256 and wrapped into a certificate.
 *
 * What it produces:
 * - `mintAuthority`: a self-signed CA (basicConstraints CA:true pathLen 0, keyUsage keyCertSign and
 *   cRLSign, both critical; subjectKeyIdentifier), as PEM and DER, with its private key as a KeyObject
 *   (never exported here) and its SHA-256 fingerprint.
 * - `issueLeaf`: a server certificate for one host name or IP address (subjectAltName, serverAuth,
 *   digitalSignature; CA:false), signed by that CA, valid at most seven days, with its fresh private
 *   key as PKCS#8 PEM, ready for `tls.createServer({ cert, key })`.
 */
import * as NodeCrypto from "node:crypto"
import * as NodeNet from "node:net"

export interface Authority {
  /** The certificate, PEM ("CERTIFICATE"). */
  readonly certPem: string
  readonly certDer: Buffer
  /** The private key; this module never exports it. */
  readonly key: NodeCrypto.KeyObject
  /** As `crypto.X509Certificate`'s fingerprint256 (AA:BB:...). */
  readonly fingerprint256: string
}

const HOUR = 3_600_000
const DAY = 24 * HOUR
const LEAF_DAYS = 7

// --- DER encoding: only what a certificate needs -------------------------------------------------

const encodeLength = (length: number): Buffer => {
  if (length < 0x80) return Buffer.from([length])
  const bytes: Array<number> = []
  for (let rest = length; rest > 0; rest = Math.floor(rest / 256)) bytes.unshift(rest & 0xff)
  return Buffer.from([0x80 | bytes.length, ...bytes])
}

/** One tag-length-value element whose contents are `parts`, concatenated. */
const tlv = (tag: number, ...parts: ReadonlyArray<Uint8Array>): Buffer => {
  const contents = Buffer.concat(parts)
  return Buffer.concat([Buffer.from([tag]), encodeLength(contents.length), contents])
}

const sequence = (...items: ReadonlyArray<Buffer>) => tlv(0x30, ...items)
const set = (...items: ReadonlyArray<Buffer>) => tlv(0x31, ...items)
const boolean = (value: boolean) => tlv(0x01, Buffer.from([value ? 0xff : 0x00]))
const octetString = (bytes: Uint8Array) => tlv(0x04, bytes)
const utf8String = (text: string) => tlv(0x0c, Buffer.from(text, "utf8"))
/** A BIT STRING of whole bytes, `unusedBits` of the last one being padding. */
const bitString = (bytes: Uint8Array, unusedBits = 0) => tlv(0x03, Buffer.from([unusedBits]), bytes)
/** [n] EXPLICIT: a constructed context-specific tag around whole elements. */
const explicit = (n: number, ...items: ReadonlyArray<Buffer>) => tlv(0xa0 | n, ...items)
/** [n] IMPLICIT of a primitive type: the context-specific tag replaces the type's own. */
const implicit = (n: number, contents: Uint8Array) => tlv(0x80 | n, contents)

/** An unsigned big-endian integer: leading zero bytes dropped, one added when the top bit is set. */
const integer = (bytes: Uint8Array): Buffer => {
  let start = 0
  while (start < bytes.length - 1 && bytes[start] === 0) start++
  const digits = bytes.length === 0 ? Buffer.from([0]) : Buffer.from(bytes.subarray(start))
  return tlv(0x02, (digits[0] & 0x80) !== 0 ? Buffer.from([0]) : Buffer.alloc(0), digits)
}

/** An OBJECT IDENTIFIER from its dotted form: the first two arcs share a byte, then base-128 arcs. */
const oid = (dotted: string): Buffer => {
  const [first = 0, second = 0, ...rest] = dotted.split(".").map(Number)
  const bytes = [first * 40 + second, ...rest].flatMap((arc) => {
    const base128 = [arc & 0x7f]
    for (let high = Math.floor(arc / 128); high > 0; high = Math.floor(high / 128)) {
      base128.unshift((high & 0x7f) | 0x80)
    }
    return base128
  })
  return tlv(0x06, Buffer.from(bytes))
}

/** RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; whole seconds, in UTC. */
const time = (date: Date): Buffer => {
  const digits = date.toISOString().slice(0, 19).replace(/\D/g, "") // YYYYMMDDHHMMSS
  return date.getUTCFullYear() < 2050
    ? tlv(0x17, Buffer.from(`${digits.slice(2)}Z`, "latin1"))
    : tlv(0x18, Buffer.from(`${digits}Z`, "latin1"))
}

// --- DER reading: just enough to take a SubjectPublicKeyInfo and a certificate apart ---------------

/** The header size and contents size of the element starting at `at`. */
const header = (der: Buffer, at: number): { readonly header: number; readonly size: number } => {
  const first = der[at + 1] ?? 0
  const count = first < 0x80 ? 0 : first & 0x7f
  let size = first < 0x80 ? first : 0
  for (let i = 0; i < count; i++) size = size * 256 + (der[at + 2 + i] ?? 0)
  if (at + 2 + count + size > der.length) throw new Error("malformed DER: an element overruns its container")
  return { header: 2 + count, size }
}

/** The contents of one element. */
const contentsOf = (element: Buffer): Buffer => {
  const { header: skip, size } = header(element, 0)
  return element.subarray(skip, skip + size)
}

/** The elements inside a constructed element, each whole (tag, length and contents). */
const childrenOf = (element: Buffer): Array<Buffer> => {
  const contents = contentsOf(element)
  const children: Array<Buffer> = []
  for (let at = 0; at < contents.length;) {
    const { header: skip, size } = header(contents, at)
    children.push(contents.subarray(at, at + skip + size))
    at += skip + size
  }
  return children
}

// --- Certificate pieces -------------------------------------------------------------------------

const ECDSA_WITH_SHA256 = sequence(oid("1.2.840.10045.4.3.2"))

const OID = {
  commonName: "2.5.4.3",
  organization: "2.5.4.10",
  subjectKeyIdentifier: "2.5.29.14",
  keyUsage: "2.5.29.15",
  subjectAltName: "2.5.29.17",
  basicConstraints: "2.5.29.19",
  authorityKeyIdentifier: "2.5.29.35",
  extKeyUsage: "2.5.29.37",
  serverAuth: "1.3.6.1.5.5.7.3.1"
} as const

/** A distinguished name, one attribute per relative name, in the order given. */
const distinguishedName = (attributes: ReadonlyArray<readonly [type: string, value: string]>) =>
  sequence(...attributes.map(([type, value]) => set(sequence(oid(type), utf8String(value)))))

/** An Extension; `critical` is left out when false (DER omits default values). */
const extension = (id: string, critical: boolean, value: Buffer) =>
  sequence(oid(id), ...(critical ? [boolean(true)] : []), octetString(value))

/** SHA-1 of the subjectPublicKey BIT STRING's bits (RFC 5280 4.2.1.2, method 1). */
const keyIdentifier = (spki: Buffer): Buffer => {
  const subjectPublicKey = childrenOf(spki)[1]
  if (subjectPublicKey === undefined) throw new Error("malformed SubjectPublicKeyInfo")
  return NodeCrypto.createHash("sha1").update(contentsOf(subjectPublicKey).subarray(1)).digest()
}

/** A random positive 16-byte serial number: top bit clear (positive), next bit set (no leading zero). */
const serialNumber = (): Buffer => {
  const bytes = NodeCrypto.randomBytes(16)
  bytes[0] = (bytes[0] & 0x7f) | 0x40
  return bytes
}

interface CertificateFields {
  readonly issuer: Buffer
  readonly subject: Buffer
  readonly notBefore: Date
  readonly notAfter: Date
  readonly spki: Buffer
  readonly extensions: ReadonlyArray<Buffer>
  /** The issuer's private key. */
  readonly signingKey: NodeCrypto.KeyObject
}

/** Assembles a v3 TBSCertificate, signs it with ECDSA/SHA-256 and returns the certificate's DER. */
const signCertificate = (fields: CertificateFields): Buffer => {
  const tbs = sequence(
    explicit(0, integer(Buffer.from([2]))), // version v3
    integer(serialNumber()),
    ECDSA_WITH_SHA256,
    fields.issuer,
    sequence(time(fields.notBefore), time(fields.notAfter)),
    fields.subject,
    fields.spki,
    explicit(3, sequence(...fields.extensions))
  )
  const signature = NodeCrypto.sign("sha256", tbs, { key: fields.signingKey, dsaEncoding: "der" })
  return sequence(tbs, ECDSA_WITH_SHA256, bitString(signature))
}

const toPem = (label: string, der: Buffer): string => {
  const lines = der.toString("base64").match(/.{1,64}/g) ?? []
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`
}

const newKeyPair = () => {
  const { privateKey, publicKey } = NodeCrypto.generateKeyPairSync("ec", { namedCurve: "P-256" })
  return { privateKey, spki: publicKey.export({ type: "spki", format: "der" }) }
}

// --- Authority ----------------------------------------------------------------------------------

/**
 * A self-signed ECDSA P-256 CA: basicConstraints CA:true (critical, pathLen 0), keyUsage keyCertSign
 * and cRLSign (critical), subjectKeyIdentifier; subject and issuer CN = `commonName`, O = "microagent";
 * a random positive 16-byte serial; valid from an hour before `now` to `validDays` (default 30) after.
 */
export const mintAuthority = (
  commonName: string,
  options?: { readonly now?: Date; readonly validDays?: number }
): Authority => {
  const now = options?.now ?? new Date()
  const validDays = options?.validDays ?? 30
  if (commonName.length === 0 || commonName.length > 64) {
    throw new Error(`the authority's common name must be 1 to 64 characters, got ${commonName.length}`)
  }
  if (!(validDays > 0) || !Number.isFinite(validDays)) {
    throw new Error(`validDays must be a positive number of days, got ${validDays}`)
  }
  const { privateKey, spki } = newKeyPair()
  const name = distinguishedName([[OID.organization, "microagent"], [OID.commonName, commonName]])
  const certDer = signCertificate({
    issuer: name,
    subject: name,
    notBefore: new Date(now.getTime() - HOUR),
    notAfter: new Date(now.getTime() + validDays * DAY),
    spki,
    extensions: [
      extension(OID.basicConstraints, true, sequence(boolean(true), integer(Buffer.from([0])))),
      // keyCertSign (bit 5) and cRLSign (bit 6): 0b00000110, the last bit padding.
      extension(OID.keyUsage, true, bitString(Buffer.from([0x06]), 1)),
      extension(OID.subjectKeyIdentifier, false, octetString(keyIdentifier(spki)))
    ],
    signingKey: privateKey
  })
  return {
    certPem: toPem("CERTIFICATE", certDer),
    certDer,
    key: privateKey,
    fingerprint256: new NodeCrypto.X509Certificate(certDer).fingerprint256
  }
}

// --- Leaf ---------------------------------------------------------------------------------------

/** Throws unless `host` can name a server: 1 to 253 ASCII characters, no whitespace or controls. */
const checkHost = (host: string): void => {
  if (host.length === 0) throw new Error("cannot issue a certificate for an empty host name")
  if (host.length > 253) {
    throw new Error(`cannot issue a certificate for a host name of ${host.length} characters (at most 253)`)
  }
  if (/[\s\p{Cc}]/u.test(host)) {
    throw new Error(`cannot issue a certificate for ${JSON.stringify(host)}: it has whitespace or controls`)
  }
  if (!/^[\x21-\x7e]+$/.test(host)) {
    throw new Error(
      `cannot issue a certificate for ${JSON.stringify(host)}: not ASCII (use the punycode form)`
    )
  }
}

/** The network-order bytes of an IPv4 or IPv6 literal (already checked by `isIP`). */
const ipAddressBytes = (host: string): Buffer => {
  if (NodeNet.isIP(host) === 4) return Buffer.from(host.split(".").map(Number))
  if (host.includes("%")) throw new Error(`cannot issue a certificate for ${host}: it has a zone index`)
  // Expand "::", and an embedded dotted quad ("::ffff:1.2.3.4") into two groups.
  const groups = (part: string): Array<number> =>
    part === "" ? [] : part.split(":").flatMap((group) => {
      if (!group.includes(".")) return [parseInt(group, 16)]
      const [a = 0, b = 0, c = 0, d = 0] = group.split(".").map(Number)
      return [a * 256 + b, c * 256 + d]
    })
  const [head = "", tail] = host.split("::")
  const before = groups(head)
  const after = tail === undefined ? [] : groups(tail)
  const all = [...before, ...Array<number>(8 - before.length - after.length).fill(0), ...after]
  return Buffer.from(all.flatMap((group) => [group >> 8, group & 0xff]))
}

/** subjectAltName: an iPAddress ([7]) for an IP literal, else a dNSName ([2]). */
const subjectAltName = (host: string): Buffer =>
  sequence(
    NodeNet.isIP(host) === 0 ? implicit(2, Buffer.from(host, "ascii")) : implicit(7, ipAddressBytes(host))
  )

/**
 * A leaf for `host` signed by `ca`, with a fresh P-256 key: subjectAltName dNSName (iPAddress for an IP
 * literal), CN = host (its first 64 characters), basicConstraints CA:false, keyUsage digitalSignature
 * (critical), extKeyUsage serverAuth, authorityKeyIdentifier (the CA's key identifier) and
 * subjectKeyIdentifier; valid from an hour before `now` until seven days after it or the CA's expiry,
 * whichever is sooner.
 */
export const issueLeaf = (
  ca: Authority,
  host: string,
  options?: { readonly now?: Date }
): { readonly certPem: string; readonly keyPem: string } => {
  checkHost(host)
  const now = options?.now ?? new Date()
  const caExpiry = Date.parse(new NodeCrypto.X509Certificate(ca.certDer).validTo)
  const notAfter = Math.min(caExpiry, now.getTime() + LEAF_DAYS * DAY)
  if (!(notAfter > now.getTime())) {
    throw new Error(
      `cannot issue a certificate for ${host}: the authority is expired at ${now.toISOString()}`
    )
  }
  // The certificate parsed above, so its TBSCertificate has [0] version, serial, signature, issuer,
  // validity, subject, ...: the leaf's issuer is the CA's subject, byte for byte.
  const caSubject = childrenOf(childrenOf(ca.certDer)[0])[5]
  const caSpki = NodeCrypto.createPublicKey(ca.key).export({ type: "spki", format: "der" })
  const { privateKey, spki } = newKeyPair()
  const certDer = signCertificate({
    issuer: caSubject,
    subject: distinguishedName([[OID.commonName, host.slice(0, 64)]]),
    notBefore: new Date(now.getTime() - HOUR),
    notAfter: new Date(notAfter),
    spki,
    extensions: [
      extension(OID.basicConstraints, false, sequence()),
      extension(OID.keyUsage, true, bitString(Buffer.from([0x80]), 7)), // digitalSignature (bit 0)
      extension(OID.extKeyUsage, false, sequence(oid(OID.serverAuth))),
      extension(OID.subjectAltName, false, subjectAltName(host)),
      extension(OID.authorityKeyIdentifier, false, sequence(implicit(0, keyIdentifier(caSpki)))),
      extension(OID.subjectKeyIdentifier, false, octetString(keyIdentifier(spki)))
    ],
    signingKey: ca.key
  })
  return {
    certPem: toPem("CERTIFICATE", certDer),
    keyPem: privateKey.export({ type: "pkcs8", format: "pem" }).toString()
  }
}

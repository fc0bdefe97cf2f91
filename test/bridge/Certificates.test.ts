import { spawnSync } from "node:child_process"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import type { AddressInfo } from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import * as NodeTls from "node:tls"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { issueLeaf, mintAuthority } from "../../src/bridge/Certificates.ts"

const ca = mintAuthority("microagent test CA")
const caCert = new NodeCrypto.X509Certificate(ca.certPem)
const leaf = issueLeaf(ca, "api.example.test")
const leafCert = new NodeCrypto.X509Certificate(leaf.certPem)

/** Runs openssl; a missing binary fails the test saying which package provides it. */
const openssl = (...args: ReadonlyArray<string>) => {
  const result = spawnSync("openssl", args, { encoding: "utf8" })
  if (result.error !== undefined) {
    throw new Error(`cannot run openssl (install the Debian package \`openssl\`): ${result.error.message}`)
  }
  return result
}

describe("mintAuthority", () => {
  it("mints a self-signed CA that Node parses and verifies", () => {
    assert.isTrue(caCert.ca)
    assert.include(caCert.subject, "CN=microagent test CA")
    assert.include(caCert.subject, "O=microagent")
    assert.strictEqual(caCert.issuer, caCert.subject)
    assert.isTrue(caCert.verify(caCert.publicKey))
    assert.isTrue(caCert.checkPrivateKey(ca.key))
    assert.strictEqual(ca.fingerprint256, caCert.fingerprint256)
    assert.match(ca.fingerprint256, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/)
    assert.deepStrictEqual(ca.certDer, Buffer.from(caCert.raw))
    assert.strictEqual(caCert.publicKey.asymmetricKeyDetails?.namedCurve, "prime256v1")
  })

  it("gives each authority its own key, serial and fingerprint", () => {
    const other = mintAuthority("microagent test CA")
    const otherCert = new NodeCrypto.X509Certificate(other.certPem)
    assert.notStrictEqual(otherCert.serialNumber, caCert.serialNumber)
    assert.notStrictEqual(other.fingerprint256, ca.fingerprint256)
    assert.isFalse(otherCert.verify(caCert.publicKey))
    for (const serial of [caCert.serialNumber, otherCert.serialNumber]) {
      assert.match(serial, /^[0-7][0-9A-F]{31}$/, "a positive 16-byte serial")
    }
  })

  it("is valid from an hour before now for validDays, in GeneralizedTime from 2050", () => {
    const now = new Date("2030-06-01T12:00:00Z")
    const cert = new NodeCrypto.X509Certificate(mintAuthority("dated", { now, validDays: 3 }).certPem)
    assert.strictEqual(Date.parse(cert.validFrom), Date.parse("2030-06-01T11:00:00Z"))
    assert.strictEqual(Date.parse(cert.validTo), Date.parse("2030-06-04T12:00:00Z"))
    const late = mintAuthority("late", { now: new Date("2049-12-20T00:00:00Z") })
    const lateCert = new NodeCrypto.X509Certificate(late.certPem)
    assert.strictEqual(Date.parse(lateCert.validTo), Date.parse("2050-01-19T00:00:00Z"))
    assert.isTrue(
      late.certDer.includes(Buffer.from("\x17\x0d491219230000Z", "latin1")),
      "UTCTime before 2050"
    )
    assert.isTrue(
      late.certDer.includes(Buffer.from("\x18\x0f20500119000000Z", "latin1")),
      "GeneralizedTime after"
    )
  })
})

describe("issueLeaf", () => {
  it("issues a server certificate for a host name, signed by the CA", () => {
    assert.strictEqual(leafCert.checkHost("api.example.test"), "api.example.test")
    assert.isUndefined(leafCert.checkHost("other.test"))
    assert.include(leafCert.subject, "CN=api.example.test")
    assert.strictEqual(leafCert.issuer, caCert.subject)
    assert.include(leafCert.subjectAltName ?? "", "DNS:api.example.test")
    assert.isTrue(leafCert.verify(caCert.publicKey))
    assert.isTrue(leafCert.checkIssued(caCert))
    assert.isFalse(leafCert.ca)
    assert.isTrue(leafCert.checkPrivateKey(NodeCrypto.createPrivateKey(leaf.keyPem)))
    assert.notStrictEqual(leafCert.serialNumber, caCert.serialNumber)
  })

  it("puts an IP literal in an iPAddress name", () => {
    const v4 = new NodeCrypto.X509Certificate(issueLeaf(ca, "10.1.2.3").certPem)
    assert.strictEqual(v4.checkIP("10.1.2.3"), "10.1.2.3")
    assert.isUndefined(v4.checkIP("10.1.2.4"))
    assert.strictEqual(v4.subjectAltName, "IP Address:10.1.2.3")
    const v6 = new NodeCrypto.X509Certificate(issueLeaf(ca, "2001:db8::1").certPem)
    assert.strictEqual(v6.checkIP("2001:db8:0:0:0:0:0:1"), "2001:db8:0:0:0:0:0:1")
    const mapped = new NodeCrypto.X509Certificate(issueLeaf(ca, "::ffff:10.1.2.3").certPem)
    assert.include(mapped.subjectAltName ?? "", "IP Address:0:0:0:0:0:FFFF:A01:203")
  })

  it("keeps the whole name in subjectAltName and its first 64 characters in the CN", () => {
    const host = `${"a".repeat(60)}.${"b".repeat(60)}.test`
    const cert = new NodeCrypto.X509Certificate(issueLeaf(ca, host).certPem)
    assert.strictEqual(cert.checkHost(host), host)
    assert.strictEqual(cert.subject, `CN=${host.slice(0, 64)}`)
  })

  it("is valid for seven days at most, and never past the CA", () => {
    const now = new Date("2030-06-01T12:00:00Z")
    const longCa = mintAuthority("long", { now, validDays: 30 })
    const week = new NodeCrypto.X509Certificate(issueLeaf(longCa, "a.test", { now }).certPem)
    assert.strictEqual(Date.parse(week.validFrom), Date.parse("2030-06-01T11:00:00Z"))
    assert.strictEqual(Date.parse(week.validTo), Date.parse("2030-06-08T12:00:00Z"))
    const shortCa = mintAuthority("short", { now, validDays: 2 })
    const capped = new NodeCrypto.X509Certificate(issueLeaf(shortCa, "a.test", { now }).certPem)
    assert.strictEqual(Date.parse(capped.validTo), Date.parse("2030-06-03T12:00:00Z"))
    assert.throws(() => issueLeaf(shortCa, "a.test", { now: new Date("2030-06-04T00:00:00Z") }), /expired/)
  })

  it("refuses a host that cannot name a server", () => {
    assert.throws(() => issueLeaf(ca, ""), /empty host name/)
    assert.throws(() => issueLeaf(ca, "a b"), /whitespace or controls/)
    assert.throws(() => issueLeaf(ca, "a\u0000b"), /whitespace or controls/)
    assert.throws(() => issueLeaf(ca, "x".repeat(300)), /300 characters \(at most 253\)/)
    assert.throws(() => issueLeaf(ca, "bücher.test"), /punycode/)
    assert.throws(() => issueLeaf(ca, "fe80::1%eth0"), /zone index/)
  })
})

describe("openssl", () => {
  let dir = ""
  beforeAll(() => {
    dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-certs-"))
    NodeFs.writeFileSync(NodePath.join(dir, "ca.pem"), ca.certPem)
    NodeFs.writeFileSync(NodePath.join(dir, "leaf.pem"), leaf.certPem)
  })
  afterAll(() => NodeFs.rmSync(dir, { recursive: true, force: true }))

  it("verifies the leaf against the CA", () => {
    const result = openssl("verify", "-CAfile", NodePath.join(dir, "ca.pem"), NodePath.join(dir, "leaf.pem"))
    assert.strictEqual(result.status, 0, result.stderr)
    assert.include(result.stdout, "leaf.pem: OK")
  })

  it("reads the extensions as intended", () => {
    const caText = openssl("x509", "-noout", "-text", "-in", NodePath.join(dir, "ca.pem"))
    assert.strictEqual(caText.status, 0, caText.stderr)
    assert.include(caText.stdout, "CA:TRUE, pathlen:0")
    assert.include(caText.stdout, "Certificate Sign, CRL Sign")
    const leafText = openssl("x509", "-noout", "-text", "-in", NodePath.join(dir, "leaf.pem"))
    assert.strictEqual(leafText.status, 0, leafText.stderr)
    assert.include(leafText.stdout, "TLS Web Server Authentication")
    assert.include(leafText.stdout, "CA:FALSE")
    assert.include(leafText.stdout, "Digital Signature")
    const keyId = (text: string, label: string) =>
      new RegExp(`${label}: ?\\n\\s*(?:keyid:)?([0-9A-F:]+)`).exec(text)?.[1]
    const caKeyId = keyId(caText.stdout, "Subject Key Identifier")
    assert.match(caKeyId ?? "", /^([0-9A-F]{2}:){19}[0-9A-F]{2}$/)
    assert.strictEqual(keyId(leafText.stdout, "Authority Key Identifier"), caKeyId)
  })
})

describe("TLS", () => {
  const servers: Array<NodeTls.Server> = []
  let port = 0
  /** A TLS server on a loopback port that presents `certificate` and echoes one line. */
  const serve = async (certificate: { readonly certPem: string; readonly keyPem: string }) => {
    const server = NodeTls.createServer({ cert: certificate.certPem, key: certificate.keyPem }, (socket) => {
      socket.on("error", () => {})
      socket.once("data", (line) => socket.end(`echo ${line}`))
    })
    server.on("tlsClientError", () => {})
    servers.push(server)
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    return (server.address() as AddressInfo).port
  }
  beforeAll(async () => {
    port = await serve(leaf)
  })
  afterAll(() =>
    Promise.all(servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))))
  )

  /** Connects, sends a line and reads the reply; rejects with the handshake's error. */
  const exchange = (options: NodeTls.ConnectionOptions) =>
    new Promise<{ readonly authorized: boolean; readonly reply: string }>((resolve, reject) => {
      const socket = NodeTls.connect({ host: "127.0.0.1", port, ...options }, () => socket.write("hello\n"))
      let reply = ""
      socket.setEncoding("utf8")
      socket.on("data", (chunk: string) => reply += chunk)
      socket.on("end", () => resolve({ authorized: socket.authorized, reply }))
      socket.on("error", reject)
    })

  /** The error code of a handshake expected to fail. */
  const refusal = (options: NodeTls.ConnectionOptions) =>
    exchange(options).then(
      () => assert.fail("the handshake succeeded"),
      (error: NodeJS.ErrnoException) => error.code
    )

  it("completes a handshake the client trusts through the CA", async () => {
    const { authorized, reply } = await exchange({ servername: "api.example.test", ca: ca.certPem })
    assert.isTrue(authorized)
    assert.strictEqual(reply, "echo hello\n")
  })

  it("is refused for another name", async () => {
    const code = await refusal({ servername: "wrong.test", ca: ca.certPem })
    assert.strictEqual(code, "ERR_TLS_CERT_ALTNAME_INVALID")
  })

  it("is refused by a client that does not trust the CA", async () => {
    assert.strictEqual(await refusal({ servername: "api.example.test" }), "UNABLE_TO_VERIFY_LEAF_SIGNATURE")
    const stranger = mintAuthority("microagent test CA")
    const code = await refusal({ servername: "api.example.test", ca: stranger.certPem })
    assert.strictEqual(code, "UNABLE_TO_VERIFY_LEAF_SIGNATURE")
  })

  it("serves an IP address's leaf to a client that connects by address", async () => {
    const ipPort = await serve(issueLeaf(ca, "127.0.0.1"))
    const { authorized, reply } = await exchange({ port: ipPort, ca: ca.certPem })
    assert.isTrue(authorized)
    assert.strictEqual(reply, "echo hello\n")
    const otherPort = await serve(issueLeaf(ca, "10.1.2.3"))
    const code = await refusal({ port: otherPort, ca: ca.certPem })
    assert.strictEqual(code, "ERR_TLS_CERT_ALTNAME_INVALID")
  })
})

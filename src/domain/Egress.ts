/**
 * Egress mediation: the per-workspace policy (persisted in the record and the spec file) and the
 * audit records the mediator writes. `broker` is the default; `off` is the explicit opt-out.
 */
import { Either, ParseResult, Schema } from "effect"
import * as Yaml from "yaml"
import { InvalidInput } from "./Errors.ts"

export const EgressMode = Schema.Literal("broker", "mitm", "off")
export type EgressMode = typeof EgressMode.Type
export const egressModes: ReadonlyArray<EgressMode> = ["broker", "mitm", "off"]

/**
 * A credential swap (`mitm` only): every request the interceptor relays to one of `domains` (a host,
 * or `.suffix` for the apex and its subdomains) carries `header` set to `format` with `{key}` replaced
 * by the value of the host-held secret `secret` (a workspace secret with `use: broker`, which never
 * reaches the guest), whatever the guest sent in it.
 */
export class CredentialSwap extends Schema.Class<CredentialSwap>("CredentialSwap")({
  name: Schema.String,
  domains: Schema.Array(Schema.String),
  header: Schema.String,
  format: Schema.String,
  secret: Schema.String
}) {}

/** The built-in `--cred-swap PROVIDER[=REF]` providers: their API host, header and format. */
export const swapProviders: Record<
  string,
  { readonly domain: string; readonly header: string; readonly format: string }
> = {
  anthropic: { domain: "api.anthropic.com", header: "x-api-key", format: "{key}" },
  openai: { domain: "api.openai.com", header: "authorization", format: "Bearer {key}" },
  gemini: { domain: "generativelanguage.googleapis.com", header: "x-goog-api-key", format: "{key}" },
  groq: { domain: "api.groq.com", header: "authorization", format: "Bearer {key}" },
  openrouter: { domain: "openrouter.ai", header: "authorization", format: "Bearer {key}" },
  deepseek: { domain: "api.deepseek.com", header: "authorization", format: "Bearer {key}" }
}

/** Where a swap's value comes from: `env:VAR` or `file:PATH` (as a secret's source; literals are refused). */
const swapRefPattern = /^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)$/

const swapInvalid = (message: string) =>
  new InvalidInput({
    message,
    remediation: `give PROVIDER[=env:VAR|file:PATH] with PROVIDER one of ${
      Object.keys(swapProviders).join(", ")
    }`
  })

/** A credential swap with the reference of the host-held secret it reads. */
export interface HeldSwap {
  readonly swap: CredentialSwap
  readonly secret: { readonly name: string; readonly source: string }
}

/**
 * `--cred-swap PROVIDER[=REF]`: the swap and the host-held secret it reads (`<PROVIDER>_API_KEY`, from
 * `env:<PROVIDER>_API_KEY` unless REF says otherwise).
 */
export const parseCredSwap = (
  text: string
): Either.Either<HeldSwap, InvalidInput> => {
  const at = text.indexOf("=")
  const provider = (at < 0 ? text : text.slice(0, at)).trim().toLowerCase()
  const known = swapProviders[provider]
  if (known === undefined) {
    return Either.left(swapInvalid(`--cred-swap ${text}: unknown provider "${provider}"`))
  }
  const secret = `${provider.toUpperCase()}_API_KEY`
  const source = at < 0 ? `env:${secret}` : text.slice(at + 1).trim()
  if (!swapRefPattern.test(source)) {
    return Either.left(
      swapInvalid(`--cred-swap ${text}: the value must come from env:VAR or file:PATH, never be written out`)
    )
  }
  return Either.right({
    swap: new CredentialSwap({
      name: provider,
      domains: [known.domain],
      header: known.header,
      format: known.format,
      secret
    }),
    secret: { name: secret, source }
  })
}

/**
 * An `--egress-swap-config FILE` (YAML or JSON): `swaps.<name>: {type: static, domains, header, format,
 * key_ref}`, decoded strictly. Only `static` swaps are built (`oauth2-cc` and `jwt-bearer` are refused).
 */
const SwapConfigFile = Schema.Struct({
  swaps: Schema.Record({
    key: Schema.String,
    value: Schema.Struct({
      type: Schema.optional(Schema.Literal("static", "oauth2-cc", "jwt-bearer")),
      domains: Schema.Array(Schema.String).pipe(Schema.minItems(1)),
      header: Schema.optional(Schema.String),
      format: Schema.optional(Schema.String),
      key_ref: Schema.String
    })
  })
})

const headerPattern = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/

/** An error about file `source`, with what such a file holds as the remediation. */
const fileError = (source: string, holds: string) => (detail: string) =>
  new InvalidInput({ message: `${source}: ${detail}`, remediation: holds })

/** A YAML or JSON file's text decoded strictly by `schema` (any other key is an error), or `invalid`'s error. */
export const decodeStrictFile = <A, I>(
  schema: Schema.Schema<A, I>,
  text: string,
  invalid: (detail: string) => InvalidInput
): Either.Either<A, InvalidInput> => {
  const document = Yaml.parseDocument(text, { uniqueKeys: true })
  if (document.errors.length > 0) {
    return Either.left(invalid(`not valid YAML or JSON: ${document.errors[0]!.message.split("\n")[0]}`))
  }
  return Schema.decodeUnknownEither(schema, { onExcessProperty: "error" })(document.toJS() ?? {}).pipe(
    Either.mapLeft((error) => invalid(ParseResult.TreeFormatter.formatErrorSync(error).split("\n").join(" ")))
  )
}

/** The swaps of a swap config's text and the secrets they read; `source` names the file in messages. */
export const decodeSwapConfig = (
  text: string,
  source: string
): Either.Either<ReadonlyArray<HeldSwap>, InvalidInput> => {
  const invalid = fileError(
    source,
    'a swap config holds `swaps: {NAME: {type: static, domains: [HOST|.SUFFIX], header: H, format: "Bearer {key}", key_ref: env:VAR|file:PATH}}`'
  )
  return decodeStrictFile(SwapConfigFile, text, invalid).pipe(
    Either.flatMap((file) => {
      const out: Array<HeldSwap> = []
      for (const [name, entry] of Object.entries(file.swaps)) {
        if (!/^[a-z0-9][a-z0-9_-]{0,62}$/.test(name)) {
          return Either.left(invalid(`swap name "${name}" is not [a-z0-9_-]`))
        }
        if ((entry.type ?? "static") !== "static") {
          return Either.left(
            invalid(`swap ${name}: type ${entry.type} is not built; only static swaps are`)
          )
        }
        const domains = entry.domains.map(normalizeAllow)
        const bad = domains.find((d) => d.includes(":") || allowProblem(d) !== undefined || /^\d/.test(d))
        if (bad !== undefined) {
          return Either.left(invalid(`swap ${name}: "${bad}" is not a host or .suffix`))
        }
        const header = (entry.header ?? "authorization").toLowerCase()
        if (!headerPattern.test(header)) {
          return Either.left(invalid(`swap ${name}: "${header}" is not a header name`))
        }
        const format = entry.format ?? "Bearer {key}"
        if (!format.includes("{key}") || /[\r\n]/.test(format)) {
          return Either.left(invalid(`swap ${name}: the format must hold {key} on one line`))
        }
        if (!swapRefPattern.test(entry.key_ref)) {
          return Either.left(invalid(`swap ${name}: key_ref must be env:VAR or file:PATH, never the value`))
        }
        const secret = `SWAP_${name.toUpperCase().replace(/-/g, "_")}`
        out.push({
          swap: new CredentialSwap({ name, domains, header, format, secret }),
          secret: { name: secret, source: entry.key_ref }
        })
      }
      return Either.right(out)
    })
  )
}

/**
 * The swaps of `--cred-swap` texts and of a swap config's text (`config`, if any), in that order; a
 * later swap of a name replaces an earlier one.
 */
export const collectSwaps = (
  texts: ReadonlyArray<string>,
  config?: { readonly text: string; readonly source: string }
): Either.Either<ReadonlyArray<HeldSwap>, InvalidInput> =>
  Either.all([
    Either.all(texts.map(parseCredSwap)),
    config === undefined ? Either.right([]) : decodeSwapConfig(config.text, config.source)
  ]).pipe(
    Either.map(([flags, file]) => [...new Map([...flags, ...file].map((s) => [s.swap.name, s])).values()])
  )

/** Whether `host` is one of `domains` (a host, or `.suffix`: the apex and its subdomains). */
export const hostMatches = (domains: ReadonlyArray<string>, host: string): boolean => {
  const name = host.toLowerCase().replace(/\.+$/, "")
  return domains.some((d) => d.startsWith(".") ? name === d.slice(1) || name.endsWith(d) : name === d)
}

/** `host`, `.suffix` (apex and subdomains) or `A.B.C.D[/N]`, each with an optional `:port`. */
const allowPattern =
  /^(?:(?:\.?[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*)|(?:\d{1,3}\.){3}\d{1,3}(?:\/\d{1,2})?)(?::\d{1,5})?$/

/** Why an `--egress-allow` entry is unusable, or undefined. */
export const allowProblem = (entry: string): string | undefined => {
  if (!allowPattern.test(entry)) {
    return `"${entry}" is not host, .suffix or A.B.C.D[/N], with an optional :port`
  }
  const cidr = /^((?:\d{1,3}\.){3}\d{1,3})(?:\/(\d{1,2}))?/.exec(entry)
  if (cidr !== null && /^\d/.test(entry)) {
    if (cidr[1]!.split(".").some((p) => Number(p) > 255)) return `"${entry}" has an octet over 255`
    if (cidr[2] !== undefined && Number(cidr[2]) > 32) return `"${entry}" has a prefix over /32`
  }
  const port = /:(\d+)$/.exec(entry)
  if (port !== null && (Number(port[1]) < 1 || Number(port[1]) > 65535)) return `"${entry}" has a bad port`
  return undefined
}

/** Lower case, trailing dot dropped (so `Example.COM.` and `example.com` are one entry). */
export const normalizeAllow = (entry: string): string => {
  const lower = entry.trim().toLowerCase()
  const port = /:(\d+)$/.exec(lower)
  const host = port === null ? lower : lower.slice(0, -port[0].length)
  return host.replace(/\.+$/, "") + (port === null ? "" : port[0])
}

export class EgressPolicy extends Schema.Class<EgressPolicy>("EgressPolicy")({
  mode: EgressMode,
  /** Allowlist entries (normalized); an allowlisted inside address overrides the inside-deny. */
  allow: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  /** Only the allowlist is reachable; other names are answered REFUSED. */
  lockAllowlist: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  /** `mitm`: destinations allowed but never intercepted (their TLS reaches the guest as it is). */
  passthrough: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  /** `mitm`: credential swaps applied to intercepted requests. */
  swaps: Schema.optionalWith(Schema.Array(CredentialSwap), { default: () => [] }),
  /** Concurrent guest connections; 0 = no cap. */
  maxConns: Schema.optional(Schema.Int.pipe(Schema.nonNegative())),
  /** Bytes per connection (both ways) before the mediator tears it down; 0 = no cap. */
  maxTotalBytes: Schema.optional(Schema.Int.pipe(Schema.nonNegative())),
  /** Bytes per second each way of each connection; faster senders are slowed, not cut; 0 = no cap. */
  maxBps: Schema.optional(Schema.Int.pipe(Schema.nonNegative()))
}) {}

/**
 * An `--egress-policy FILE` (YAML or JSON): `allow` and `passthrough` destinations, in the allowlist's
 * grammar, unioned with `--egress-allow` and `--egress-passthrough`. A passthrough destination is
 * allowed and, under `mitm`, never intercepted (nothing is in `broker` mode). Decoded strictly: any
 * other key is an error.
 */
export const EgressPolicyFile = Schema.Struct({
  allow: Schema.optional(Schema.Array(Schema.String)),
  passthrough: Schema.optional(Schema.Array(Schema.String))
})

/** The destinations of a policy file's text, checked; `source` names the file in messages. */
export const decodeEgressPolicyFile = (
  text: string,
  source: string
): Either.Either<
  { readonly allow: ReadonlyArray<string>; readonly passthrough: ReadonlyArray<string> },
  InvalidInput
> => {
  const invalid = fileError(
    source,
    "an egress policy holds `allow` and `passthrough` lists of host, .suffix or A.B.C.D[/N][:port]"
  )
  return decodeStrictFile(EgressPolicyFile, text, invalid).pipe(
    Either.flatMap((file) => {
      const allow = (file.allow ?? []).map(normalizeAllow)
      const passthrough = (file.passthrough ?? []).map(normalizeAllow)
      const problem = [...allow, ...passthrough].map(allowProblem).find((p) => p !== undefined)
      return problem === undefined ? Either.right({ allow, passthrough }) : Either.left(invalid(problem))
    })
  )
}

/** What a record without an `egress` field (or a `create` without flags) gets. */
export const defaultEgress = new EgressPolicy({ mode: "broker", allow: [], lockAllowlist: false })

/** One line of the audit log. The mediator writes more fields than these; they are kept as they are. */
export const EgressRecord = Schema.Struct({
  ts: Schema.String,
  event: Schema.String,
  workspace: Schema.String
}, Schema.Record({ key: Schema.String, value: Schema.Unknown }))
export type EgressRecord = typeof EgressRecord.Type

/**
 * What a one-shot run reached and was refused, summed from its audit log (which the mediator writes,
 * outside the guest's control): `dispatch`'s receipt.
 */
export class EgressReceipt extends Schema.Class<EgressReceipt>("EgressReceipt")({
  /** The workspace's mediation: `broker`, `off` (nothing mediated, nothing recorded) or `none` (no NIC). */
  mode: Schema.Literal("broker", "mitm", "off", "none"),
  /** Audit records of the run, every kind. */
  decisionCount: Schema.Number,
  /** Connections let through, by destination (the name it was resolved from, else `ip:port`). */
  allowByHost: Schema.Record({ key: Schema.String, value: Schema.Number }),
  /** Refused connections, datagrams and lookups, by destination. */
  denyByHost: Schema.Record({ key: Schema.String, value: Schema.Number }),
  /** How often each signal (`denied`, `foreign-resolver`, `quic-udp443`, …) was raised. */
  signals: Schema.Record({ key: Schema.String, value: Schema.Number }),
  dnsAllowed: Schema.Number,
  dnsDenied: Schema.Number,
  bytesOut: Schema.Number,
  bytesIn: Schema.Number,
  /** Flows a cap tore down. */
  capExceeded: Schema.Number
}) {}

const countInto = (into: Record<string, number>, key: string) => {
  into[key] = (into[key] ?? 0) + 1
}

/** Sums audit records into a receipt; records of kinds it does not know only count as decisions. */
export const receiptOf = (
  mode: EgressReceipt["mode"],
  records: ReadonlyArray<EgressRecord>
): EgressReceipt => {
  const allowByHost: Record<string, number> = {}
  const denyByHost: Record<string, number> = {}
  const signals: Record<string, number> = {}
  let dnsAllowed = 0
  let dnsDenied = 0
  let bytesOut = 0
  let bytesIn = 0
  let capExceeded = 0
  const text = (value: unknown) => (typeof value === "string" && value !== "" ? value : undefined)
  const number = (value: unknown) => (typeof value === "number" && Number.isFinite(value) ? value : 0)
  for (const record of records) {
    const where = text(record.host) ?? text(record.name) ?? text(record.dst) ?? "?"
    const signal = text(record.signal)
    if (signal !== undefined) countInto(signals, signal)
    switch (record.event) {
      case "egress_allow":
        countInto(allowByHost, where)
        break
      case "egress_close":
        bytesOut += number(record.bytes_out)
        bytesIn += number(record.bytes_in)
        break
      case "egress_dns_allow":
        dnsAllowed++
        break
      case "egress_dns_deny":
        dnsDenied++
        countInto(denyByHost, where)
        break
      case "egress_cap_exceeded":
        capExceeded++
        break
      // The credential broker's requests count with the flows, under the upstream's host:port.
      case "broker_request_allow":
        countInto(allowByHost, where)
        bytesOut += number(record.bytes_out)
        bytesIn += number(record.bytes_in)
        break
      default:
        if (record.event.endsWith("deny")) countInto(denyByHost, where)
    }
  }
  const sorted = (counts: Record<string, number>) =>
    Object.fromEntries(Object.entries(counts).sort(([a], [b]) => a.localeCompare(b)))
  return new EgressReceipt({
    mode,
    decisionCount: records.length,
    allowByHost: sorted(allowByHost),
    denyByHost: sorted(denyByHost),
    signals: sorted(signals),
    dnsAllowed,
    dnsDenied,
    bytesOut,
    bytesIn,
    capExceeded
  })
}

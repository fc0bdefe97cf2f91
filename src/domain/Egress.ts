/**
 * Egress mediation: the per-workspace policy (persisted in the record and the spec file) and the
 * audit records the mediator writes. `broker` is the default; `off` is the explicit opt-out.
 */
import { Schema } from "effect"

export const EgressMode = Schema.Literal("broker", "off")
export type EgressMode = typeof EgressMode.Type
export const egressModes: ReadonlyArray<EgressMode> = ["broker", "off"]

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
  /** Concurrent guest connections; 0 = no cap. */
  maxConns: Schema.optional(Schema.Int.pipe(Schema.nonNegative())),
  /** Bytes per connection (both ways) before the mediator tears it down; 0 = no cap. */
  maxTotalBytes: Schema.optional(Schema.Int.pipe(Schema.nonNegative()))
}) {}

/** What a record without an `egress` field (or a `create` without flags) gets. */
export const defaultEgress = new EgressPolicy({ mode: "broker", allow: [], lockAllowlist: false })

/** One line of the audit log. The mediator writes more fields than these; they are kept as they are. */
export const EgressRecord = Schema.Struct({
  ts: Schema.String,
  event: Schema.String,
  workspace: Schema.String
}, Schema.Record({ key: Schema.String, value: Schema.Unknown }))
export type EgressRecord = typeof EgressRecord.Type

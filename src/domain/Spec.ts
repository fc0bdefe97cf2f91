/**
 * `microagent.yaml`: the workspace spec, decoded strictly. Unknown or misplaced fields are errors that
 * say where the field belongs; fields this version does not act on are refused, never ignored.
 */
import { Either, ParseResult, Schema } from "effect"
import * as Yaml from "yaml"
import { EgressMode } from "./Egress.ts"
import { InvalidInput } from "./Errors.ts"
import { NetworkMode, ProfileName, RestartPolicy, WorkspaceName } from "./Workspace.ts"

const envNamePattern = /^[A-Za-z_][A-Za-z0-9_]*$/
const EnvName = Schema.String.pipe(
  Schema.pattern(envNamePattern, { message: () => "not a valid environment variable name" })
)

export const SpecResources = Schema.Struct({
  memoryMiB: Schema.optional(Schema.Int.pipe(Schema.between(64, 1024 * 1024))),
  cpuCount: Schema.optional(Schema.Int.pipe(Schema.between(1, 256))),
  sizeMiB: Schema.optional(Schema.Int.pipe(Schema.between(16, 16 * 1024 * 1024))),
  headroomMiB: Schema.optional(Schema.Int.pipe(Schema.between(0, 1024 * 1024)))
})

const SpecPort = Schema.Int.pipe(Schema.between(1, 65535))

export const SpecNetwork = Schema.Struct({
  mode: Schema.optional(NetworkMode),
  /** The guest's own IPv4 addressing (Addressing.ts checks them together). */
  ip: Schema.optional(Schema.String),
  subnet: Schema.optional(Schema.String),
  gateway: Schema.optional(Schema.String),
  dns: Schema.optional(Schema.Array(Schema.String)),
  /** `A.B.C.D/N via A.B.C.D`. */
  routes: Schema.optional(Schema.Array(Schema.String)),
  /** Published ports, as `-p`: the host address defaults to 127.0.0.1. */
  forwards: Schema.optional(Schema.Array(Schema.Struct({
    protocol: Schema.optional(Schema.Literal("tcp")),
    host: Schema.optional(Schema.String),
    hostPort: SpecPort,
    guestPort: SpecPort
  })))
})

/** Egress mediation, as `--egress`, `--egress-allow`, `--egress-lock-allowlist` and the caps. */
export const SpecEgress = Schema.Struct({
  mode: Schema.optional(EgressMode),
  allow: Schema.optional(Schema.Array(Schema.String)),
  lockAllowlist: Schema.optional(Schema.Boolean),
  /** `mitm`: allowed and never intercepted, as `--egress-passthrough`. */
  passthrough: Schema.optional(Schema.Array(Schema.String)),
  /** `mitm`: `PROVIDER[=env:VAR|file:PATH]`, as `--cred-swap`. */
  credSwap: Schema.optional(Schema.Array(Schema.String)),
  maxConns: Schema.optional(Schema.Int.pipe(Schema.nonNegative())),
  maxTotalBytes: Schema.optional(Schema.Int.pipe(Schema.nonNegative())),
  maxBps: Schema.optional(Schema.Int.pipe(Schema.nonNegative()))
})

/** An ext4 image (`disks`) or a tar bundle (`bundles`) attached at `mountpoint`, as `-v path:mountpoint`. */
export const SpecDisk = Schema.Struct({
  name: Schema.optional(Schema.String),
  /** Relative paths are taken from the spec file's directory. */
  path: Schema.NonEmptyTrimmedString,
  mountpoint: Schema.NonEmptyTrimmedString,
  mode: Schema.optional(Schema.Literal("ro", "rw"))
})

export const SpecOutput = Schema.Struct({
  name: Schema.NonEmptyTrimmedString,
  path: Schema.NonEmptyTrimmedString
})

/** A host file delivered into the guest at every start: `dst` absolute and unique, `mode` octal text. */
export const SpecFile = Schema.Struct({
  /** Relative paths are taken from the spec file's directory. */
  src: Schema.NonEmptyTrimmedString,
  dst: Schema.NonEmptyTrimmedString,
  mode: Schema.optional(
    Schema.String.pipe(
      Schema.pattern(/^0?[0-7]{3,4}$/, { message: () => 'a mode is octal text like "0755"' })
    )
  )
})

/** `service`: a shell command, or `{command}` as a shell command or an argv list. */
export const SpecService = Schema.Union(
  Schema.NonEmptyTrimmedString,
  Schema.Struct({ command: Schema.Union(Schema.NonEmptyTrimmedString, Schema.NonEmptyArray(Schema.String)) })
)

const seconds = (min: number) => Schema.optional(Schema.Int.pipe(Schema.between(min, 86400)))

/** `health`: `exec` (argv) or `httpGet` (a path, with `port`, or `{path, port}`), and its timing. */
export const SpecHealth = Schema.Struct({
  exec: Schema.optional(Schema.NonEmptyArray(Schema.String)),
  httpGet: Schema.optional(Schema.Union(
    Schema.String,
    Schema.Struct({ path: Schema.String, port: SpecPort })
  )),
  port: Schema.optional(SpecPort),
  intervalSeconds: seconds(1),
  timeoutSeconds: seconds(1),
  retries: Schema.optional(Schema.Int.pipe(Schema.between(1, 1000))),
  startPeriodSeconds: seconds(0)
})

/**
 * A credential broker endpoint in an Agentfile, the `--broker` fields as YAML: `secret` one
 * `NAME=SOURCE` or a list, `env` the base-url-env variables (`KEY` or `KEY=/path`); relative paths are
 * taken from the spec file's directory; `proxy: true` as the `proxy` field, `connectAllowlist` as
 * `connect-allow=`. `grant` is accepted here
 * only to be refused by name, as `--broker` refuses it.
 */
export const SpecBroker = Schema.Struct({
  upstream: Schema.NonEmptyTrimmedString,
  secret: Schema.optional(
    Schema.Union(Schema.NonEmptyTrimmedString, Schema.Array(Schema.NonEmptyTrimmedString))
  ),
  env: Schema.optional(Schema.Array(Schema.NonEmptyTrimmedString)),
  ca: Schema.optional(Schema.NonEmptyTrimmedString),
  capture: Schema.optional(Schema.Boolean),
  assurance: Schema.optional(Schema.String),
  proxy: Schema.optional(Schema.Boolean),
  /** With `proxy`: the destinations its CONNECT tunnel may reach, as `connect-allow=` lists them. */
  connectAllowlist: Schema.optional(Schema.Array(Schema.NonEmptyTrimmedString)),
  grant: Schema.optional(Schema.String)
})
export type SpecBroker = typeof SpecBroker.Type

/**
 * `agent:`, which makes a spec an Agentfile: the one-shot command `run --file` and `dispatch --file`
 * run when given none (`--exec` or an argv wins), and the egress envelope it runs under (`egress` and
 * `allow` join the spec's `egress:` and the `--egress*` flags; flags win, allowlists are unioned).
 */
export const SpecAgent = Schema.Struct({
  entry: Schema.optional(Schema.NonEmptyTrimmedString),
  egress: Schema.optional(EgressMode),
  allow: Schema.optional(Schema.Array(Schema.String)),
  /** `PROVIDER[=REF]` credential swaps (`mitm`), as `--cred-swap`. */
  "cred-swap": Schema.optional(Schema.Array(Schema.String)),
  /** One credential broker endpoint (docs/egress.md); `brokers` for several, not both. */
  broker: Schema.optional(SpecBroker),
  brokers: Schema.optional(Schema.Array(SpecBroker))
})

export const Spec = Schema.Struct({
  name: Schema.optional(WorkspaceName),
  image: Schema.optional(Schema.NonEmptyTrimmedString),
  profile: Schema.optional(ProfileName),
  restart: Schema.optional(RestartPolicy),
  entrypoint: Schema.optional(Schema.String),
  hostname: Schema.optional(
    Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/, {
      message: () => "a hostname is 1 to 63 letters, digits and '-', not starting or ending with '-'"
    }))
  ),
  env: Schema.optional(Schema.Record({ key: EnvName, value: Schema.String })),
  resources: Schema.optional(SpecResources),
  network: Schema.optional(SpecNetwork),
  egress: Schema.optional(SpecEgress),
  disks: Schema.optional(Schema.Array(SpecDisk)),
  bundles: Schema.optional(Schema.Array(SpecDisk)),
  outputs: Schema.optional(Schema.Array(SpecOutput)),
  files: Schema.optional(Schema.Array(SpecFile)),
  /** Run once before the first start: commands, or `{run}` / `{file}` (a file whose text is one command). */
  setup: Schema.optional(Schema.Array(Schema.Union(
    Schema.NonEmptyTrimmedString,
    Schema.Struct({ run: Schema.NonEmptyTrimmedString }),
    Schema.Struct({ file: Schema.NonEmptyTrimmedString })
  ))),
  /** Files whose text each runs as one setup command, after `setup`. */
  setupFiles: Schema.optional(Schema.Array(Schema.NonEmptyTrimmedString)),
  /** A command the guest keeps running (restarted with back-off). */
  service: Schema.optional(SpecService),
  /** The absolute guest path of the shell `connect` runs. */
  shell: Schema.optional(Schema.String.pipe(
    Schema.pattern(/^\/\S*$/, { message: () => "shell is an absolute guest path like /bin/bash" })
  )),
  health: Schema.optional(SpecHealth),
  agent: Schema.optional(SpecAgent)
})
export type Spec = typeof Spec.Type

const known: Record<string, ReadonlyArray<string>> = {
  "": [
    "name",
    "image",
    "profile",
    "restart",
    "entrypoint",
    "hostname",
    "env",
    "resources",
    "network",
    "egress",
    "disks",
    "bundles",
    "outputs",
    "files",
    "setup",
    "setupFiles",
    "service",
    "shell",
    "health",
    "agent"
  ],
  resources: ["memoryMiB", "cpuCount", "sizeMiB", "headroomMiB"],
  network: ["mode", "forwards", "ip", "subnet", "gateway", "dns", "routes"],
  egress: [
    "mode",
    "allow",
    "lockAllowlist",
    "passthrough",
    "credSwap",
    "maxConns",
    "maxTotalBytes",
    "maxBps"
  ],
  health: ["exec", "httpGet", "port", "intervalSeconds", "timeoutSeconds", "retries", "startPeriodSeconds"],
  agent: ["entry", "egress", "allow", "cred-swap", "broker", "brokers"]
}

/** Fields of the original spec format that this version does not act on yet. */
const notYet: Record<string, ReadonlyArray<string>> = {
  "": [
    "model",
    "modelRunner",
    "modelMediation",
    "mediation",
    "acknowledgeCapabilityRisk"
  ],
  network: ["ipv6", "ipv6Subnet", "ipv6Gateway"]
}

/** Where a field that is misplaced at `section` actually belongs. */
const homeOf = (field: string): string | undefined => {
  for (const [section, fields] of Object.entries(known)) {
    if (fields.includes(field)) return section
  }
  return undefined
}

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value)

const checkFields = (value: Record<string, unknown>, section: string): string | undefined => {
  for (const field of Object.keys(value)) {
    const where = section === "" ? "top-level field" : `field in ${section}`
    if (known[section]?.includes(field)) {
      const nested = value[field]
      if (known[field] && section === "" && isRecord(nested)) {
        const problem = checkFields(nested, field)
        if (problem) return problem
      }
      continue
    }
    if (notYet[section]?.includes(field)) {
      return `${section === "" ? "" : `${section}.`}${field} is not supported by this version of microagent`
    }
    const home = homeOf(field)
    if (home !== undefined && home !== section) {
      return `unknown ${where} "${field}"; it belongs ${home === "" ? "at the top level" : `under ${home}:`}`
    }
    return `unknown ${where} "${field}"`
  }
  return undefined
}

/**
 * One line per offending field: the alternatives of a union are folded into "expected one of …", the
 * "or undefined" of optional fields is dropped, and a parent is not reported when its child is.
 */
const formatIssues = (error: ParseResult.ParseError): string => {
  const issues = ParseResult.ArrayFormatter.formatErrorSync(error)
  const byPath = new Map<string, Array<string>>()
  for (const issue of issues) {
    const path = issue.path.join(".")
    if (issue.message.startsWith("Expected undefined, actual")) continue
    byPath.set(path, [...(byPath.get(path) ?? []), issue.message])
  }
  const paths = [...byPath.keys()].filter((path) =>
    ![...byPath.keys()].some((other) => other !== path && other.startsWith(`${path}.`))
  )
  return paths.map((path) => {
    const messages = byPath.get(path)!
    const expected = messages.map((m) => /^Expected (.*), actual (.*)$/s.exec(m)).filter((m) => m !== null)
    const text = expected.length === messages.length && expected.length > 1
      ? `expected one of ${expected.map((m) => m[1]).join(", ")}; got ${expected[0]![2]}`
      : messages[0]!
    return `${path.length > 0 ? `${path}: ` : ""}${text}`
  }).join("; ")
}

/** Decodes spec text; `source` names the file in messages. */
export const decodeSpec = (text: string, source: string): Either.Either<Spec, InvalidInput> => {
  const invalid = (detail: string) =>
    Either.left(
      new InvalidInput({
        message: `${source}: ${detail}`,
        remediation: "see docs/spec.md for the fields of microagent.yaml"
      })
    )
  const document = Yaml.parseDocument(text, { uniqueKeys: true })
  if (document.errors.length > 0) {
    return invalid(`not valid YAML: ${document.errors[0]!.message.split("\n")[0]}`)
  }
  const value: unknown = document.toJS() ?? {}
  if (!isRecord(value)) return invalid("the spec must be a mapping of fields")
  const problem = checkFields(value, "")
  if (problem) return invalid(problem)
  if (isRecord(value.env)) {
    const bad = Object.keys(value.env).find((key) => !envNamePattern.test(key))
    if (bad !== undefined) return invalid(`env: "${bad}" is not a valid environment variable name`)
  }
  return Schema.decodeUnknownEither(Spec, { onExcessProperty: "error", errors: "all" })(value).pipe(
    Either.mapLeft((error) =>
      new InvalidInput({
        message: `${source}: ${formatIssues(error)}`,
        remediation: "see docs/spec.md for the fields of microagent.yaml"
      })
    )
  )
}

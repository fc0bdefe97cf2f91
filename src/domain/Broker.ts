/**
 * The credential broker's endpoints: `--broker 'upstream=URL;secret=NAME=SOURCE;base-url-env=KEY;…'`.
 *
 * The guest never holds a brokered credential. It sends `@secret:NAME` where the credential goes (a
 * header value or the query string) to its endpoint at http://127.0.0.1:PORT; the host-side broker
 * checks that the endpoint may use NAME, swaps the value in, and makes its own HTTPS request to the
 * upstream. The endpoint grammar is the original's, `;`-separated:
 *
 * - `upstream=URL` (once, required): `http(s)://host[:port][/prefix]`, no credentials, query or fragment;
 * - `secret=NAME=SOURCE` (repeatable): a secret held by the broker, from `env:`, `file:` or `dotenv:`;
 * - `base-url-env=KEY` or `KEY=/path` (repeatable): a guest variable set to the endpoint's URL (+ path);
 * - `ca=PATH`: a PEM bundle trusted for the upstream besides the usual roots;
 * - `capture`: record each request before the swap (path, headers as sent, 1 MiB of body);
 * - `assurance=trusted-upstream` (the default: a relay that trusts the upstream with the credential
 *   and with what it answers) or `assurance=semantic` with `grant=PATH` (HTTPS upstream, no `proxy`:
 *   only the typed operations of the grant file, and only the answers they allow; domain/BrokerGrant.ts);
 * - `proxy` (one endpoint at most): the endpoint also tunnels CONNECT to public destinations, classified
 *   on the address dialled (domain/Inside.ts), and the guest's HTTPS_PROXY points at it;
 * - `connect-allow=ENTRY[,ENTRY…]` (with `proxy`, repeatable): only these destinations, each `host`,
 *   `.suffix` or `A.B.C.D[/N]` with an optional `:port` (as `--egress-allow`), are tunnelled.
 */
import { Effect, Either } from "effect"
import * as NodePath from "node:path"
import { octets, within } from "./Addressing.ts"
import { type BrokerGrant, decodeBrokerGrant, grantProblem } from "./BrokerGrant.ts"
import { allowProblem, hostMatches, normalizeAllow } from "./Egress.ts"
import { InvalidInput } from "./Errors.ts"
import { parseSecretFlag } from "./SecretRefs.ts"
import type { Spec } from "./Spec.ts"
import { BrokerEndpoint, SecretRef } from "./Workspace.ts"

/** The guest port of the first endpoint; endpoint N listens on this plus N. */
const brokerBasePort = 18888
/** Endpoints one workspace may have (each is a virtio-serial port of its VM). */
const maxBrokers = 8

/** What a `@secret:NAME` reference looks like in a request (the name as in secret names). */
const secretReference = /@secret:([A-Za-z_][A-Za-z0-9_]{0,127})/g

const usage =
  "write --broker 'upstream=https://api.example.com;secret=TOKEN=env:API_TOKEN;base-url-env=API_URL'"

const invalid = (message: string, remediation = usage) => new InvalidInput({ message, remediation })

const envName = /^[A-Za-z_][A-Za-z0-9_]*$/

/** A parsed endpoint: what the workspace records, and the broker-held secret references it declares. */
interface ParsedBroker {
  readonly endpoint: BrokerEndpoint
  readonly secrets: ReadonlyArray<SecretRef>
}

const checkUpstream = (text: string) =>
  Effect.gen(function*() {
    let url: URL
    try {
      url = new URL(text)
    } catch {
      return yield* invalid(`broker upstream "${text}" is not a URL`)
    }
    if (url.protocol !== "https:" && url.protocol !== "http:") {
      return yield* invalid(`broker upstream "${text}": only http:// and https:// upstreams are supported`)
    }
    if (url.username !== "" || url.password !== "") {
      return yield* invalid(
        "a broker upstream holds no credentials",
        "give the credential as secret=NAME=SOURCE and send @secret:NAME from the guest"
      )
    }
    if (url.search !== "" || url.hash !== "") {
      return yield* invalid(
        `broker upstream "${text}" has a query or fragment; give scheme, host and path only`
      )
    }
    return `${url.origin}${url.pathname.replace(/\/+$/, "")}`
  })

/** Reads a grant file's text (the surfaces give the host's file reader: the domain reads no files). */
export type ReadGrantFile = (path: string) => string

/** Parses the `index`th `--broker` value; relative paths are taken from `cwd`. */
export const parseBroker = (text: string, index: number, cwd: string, readFile?: ReadGrantFile) =>
  Effect.gen(function*() {
    let upstream: string | undefined
    const secrets: Array<SecretRef> = []
    const baseUrlEnv: Array<{ name: string; path: string }> = []
    let ca: string | undefined
    let capture = false
    let proxy = false
    const connectAllow: Array<string> = []
    let assurance: "trusted-upstream" | "semantic" = "trusted-upstream"
    let grantFile: string | undefined
    for (const raw of text.split(";")) {
      const field = raw.trim()
      if (field === "") continue
      const at = field.indexOf("=")
      const key = at < 0 ? field : field.slice(0, at)
      const value = at < 0 ? undefined : field.slice(at + 1)
      const needValue = () =>
        value === undefined || value === ""
          ? Effect.fail(invalid(`broker field ${key} needs a value (${key}=…)`))
          : Effect.succeed(value)
      switch (key) {
        case "upstream":
          if (upstream !== undefined) return yield* invalid("a broker endpoint has one upstream")
          upstream = yield* checkUpstream(yield* needValue())
          break
        case "secret": {
          const ref = yield* parseSecretFlag(yield* needValue(), cwd).pipe(
            Effect.mapError((e) => invalid(`broker ${e.message.replace(/--secret/g, "secret=")}`))
          )
          if (secrets.some((s) => s.name === ref.name)) {
            return yield* invalid(`broker secret ${ref.name} is given twice`)
          }
          secrets.push(new SecretRef({ name: ref.name, source: ref.source, use: "broker" }))
          break
        }
        case "base-url-env": {
          const given = yield* needValue()
          const eq = given.indexOf("=")
          const name = eq < 0 ? given : given.slice(0, eq)
          const path = eq < 0 ? "" : given.slice(eq + 1)
          if (!envName.test(name)) return yield* invalid(`base-url-env: "${name}" is not a variable name`)
          if (path !== "" && (!path.startsWith("/") || /[\s?#]/.test(path))) {
            return yield* invalid(`base-url-env ${name}: "${path}" is not a path (it starts with /)`)
          }
          baseUrlEnv.push({ name, path })
          break
        }
        case "ca":
          ca = NodePath.resolve(cwd, yield* needValue())
          break
        case "capture":
          if (value !== undefined) return yield* invalid("capture takes no value")
          capture = true
          break
        case "assurance":
          if (value !== "trusted-upstream" && value !== "semantic") {
            return yield* invalid(`unknown assurance "${value ?? ""}" (semantic or trusted-upstream)`)
          }
          assurance = value
          break
        case "grant":
          if (grantFile !== undefined) return yield* invalid("a broker endpoint has one grant file")
          grantFile = NodePath.resolve(cwd, yield* needValue())
          break
        case "proxy":
          if (value !== undefined) return yield* invalid("proxy takes no value")
          proxy = true
          break
        case "connect-allow":
          for (const entry of (yield* needValue()).split(",").map((e) => e.trim()).filter((e) => e !== "")) {
            const problem = allowProblem(normalizeAllow(entry))
            if (problem !== undefined) return yield* invalid(`connect-allow: ${problem}`)
            connectAllow.push(normalizeAllow(entry))
          }
          break
        default:
          return yield* invalid(`unknown broker field "${key}"`)
      }
    }
    if (upstream === undefined) return yield* invalid("a broker endpoint needs upstream=URL")
    if (connectAllow.length > 0 && !proxy) {
      return yield* invalid("connect-allow= limits the CONNECT tunnel: it goes with proxy", "add proxy")
    }
    const grant = grantFile === undefined ? undefined : yield* readGrant(grantFile, readFile)
    yield* semanticProblem({ upstream, assurance, grant, proxy })
    return {
      endpoint: new BrokerEndpoint({
        upstream,
        secrets: secrets.map((s) => s.name),
        baseUrlEnv,
        ...(ca === undefined ? {} : { ca }),
        capture,
        proxy,
        connectAllow,
        assurance,
        ...(grant === undefined ? {} : { grant, grantFile }),
        guestPort: brokerBasePort + index
      }),
      secrets
    } satisfies ParsedBroker
  })

const readGrant = (path: string, readFile: ReadGrantFile | undefined) =>
  Effect.gen(function*() {
    if (readFile === undefined) {
      return yield* invalid(
        `grant=${path}: this caller reads no files`,
        "give the endpoint from the CLI or MCP"
      )
    }
    let text: string
    try {
      text = readFile(path)
    } catch (cause) {
      return yield* invalid(
        `broker grant=${path}: ${cause instanceof Error ? cause.message : String(cause)}`,
        "give a readable grant file (YAML or JSON)"
      )
    }
    return yield* Either.match(decodeBrokerGrant(text, `broker grant ${path}`), {
      onLeft: Effect.fail,
      onRight: Effect.succeed
    })
  })

/**
 * What assurance asks of an endpoint: `semantic` has a grant, an https:// upstream and no CONNECT
 * tunnel; a grant goes with `semantic` only.
 */
const semanticProblem = (endpoint: {
  readonly upstream: string
  readonly assurance: "trusted-upstream" | "semantic"
  readonly grant?: BrokerGrant | undefined
  readonly proxy: boolean
}) =>
  Effect.gen(function*() {
    if (endpoint.assurance === "trusted-upstream") {
      if (endpoint.grant !== undefined) {
        return yield* invalid("a grant= file goes with assurance=semantic", "add assurance=semantic")
      }
      return
    }
    if (endpoint.grant === undefined) {
      return yield* invalid(
        "assurance=semantic needs a grant file: grant=PATH",
        "write the operations the guest may perform in a grant file (docs/egress.md)"
      )
    }
    const problem = grantProblem(endpoint.grant)
    if (problem !== undefined) return yield* invalid(`broker grant: ${problem}`)
    if (!endpoint.upstream.startsWith("https://")) {
      return yield* invalid("assurance=semantic relays to an https:// upstream only")
    }
    if (endpoint.proxy) {
      return yield* invalid(
        "assurance=semantic opens no CONNECT tunnel: proxy goes with trusted-upstream",
        "drop proxy, or give the tunnel its own trusted-upstream endpoint"
      )
    }
  })

/** Every `--broker` value of one workspace; names are unique across its endpoints. */
export const parseBrokers = (texts: ReadonlyArray<string>, cwd: string, readFile?: ReadGrantFile) =>
  Effect.gen(function*() {
    if (texts.length > maxBrokers) {
      return yield* invalid(`at most ${maxBrokers} broker endpoints per workspace (${texts.length} given)`)
    }
    const parsed = yield* Effect.forEach(texts, (text, i) => parseBroker(text, i, cwd, readFile))
    const names = parsed.flatMap((p) => p.secrets.map((s) => s.name))
    const twice = names.find((name, i) => names.indexOf(name) !== i)
    if (twice !== undefined) {
      return yield* invalid(
        `broker secret ${twice} is declared by two endpoints`,
        "give each endpoint its own secret names"
      )
    }
    const vars = parsed.flatMap((p) => p.endpoint.baseUrlEnv.map((e) => e.name))
    const dup = vars.find((name, i) => vars.indexOf(name) !== i)
    if (dup !== undefined) return yield* invalid(`base-url-env ${dup} is set by two endpoints`)
    if (parsed.filter((p) => p.endpoint.proxy).length > 1) {
      return yield* invalid("only one broker endpoint may be the proxy (HTTPS_PROXY points at one)")
    }
    return {
      endpoints: parsed.map((p) => p.endpoint),
      secrets: parsed.flatMap((p) => p.secrets)
    }
  })

/** The guest's URL of an endpoint. */
const brokerUrl = (endpoint: BrokerEndpoint) => `http://127.0.0.1:${endpoint.guestPort}`

/** The guest environment the endpoints give (the user's own values win): base-url-env, and the first's URL. */
export const brokerEnv = (endpoints: ReadonlyArray<BrokerEndpoint>): Record<string, string> => {
  const env: Record<string, string> = {}
  if (endpoints.length > 0) env.MICROAGENT_BROKER_URL = brokerUrl(endpoints[0]!)
  for (const endpoint of endpoints) {
    for (const { name, path } of endpoint.baseUrlEnv) env[name] = `${brokerUrl(endpoint)}${path}`
    if (endpoint.proxy) {
      // HTTPS only (a CONNECT tunnel): the endpoints' own http:// URLs stay direct even for clients
      // that ignore NO_PROXY (busybox wget). Both cases, as clients read one or the other.
      for (const name of ["HTTPS_PROXY", "https_proxy"]) env[name] = brokerUrl(endpoint)
      env.NO_PROXY = env.no_proxy = "127.0.0.1,localhost"
    }
  }
  return env
}

/** The secrets a start delivers into the guest: those the broker does not hold. */
export const guestSecrets = <A extends { readonly use?: "broker" | undefined }>(refs: ReadonlyArray<A>) =>
  refs.filter((ref) => ref.use !== "broker")

/** The `--broker` text of a recorded endpoint (its secrets' sources are in the workspace's secrets). */
export const describeBroker = (endpoint: BrokerEndpoint) =>
  [
    `upstream=${endpoint.upstream}`,
    ...endpoint.secrets.map((name) => `secret=${name}`),
    ...endpoint.baseUrlEnv.map((e) => `base-url-env=${e.name}${e.path === "" ? "" : `=${e.path}`}`),
    ...(endpoint.ca === undefined ? [] : [`ca=${endpoint.ca}`]),
    ...(endpoint.capture ? ["capture"] : []),
    ...(endpoint.proxy ? ["proxy"] : []),
    ...(endpoint.connectAllow.length === 0 ? [] : [`connect-allow=${endpoint.connectAllow.join(",")}`]),
    ...(endpoint.assurance === "semantic" ? ["assurance=semantic"] : []),
    ...(endpoint.grantFile === undefined ? [] : [`grant=${endpoint.grantFile}`])
  ].join(";")

/**
 * Swaps `@secret:NAME` references in `text` for their values: the text, the names referenced, and those
 * the endpoint does not hold (a request with any of those is refused, never sent with the reference).
 */
export const swapReferences = (text: string, values: ReadonlyMap<string, string>) => {
  const refs: Array<string> = []
  const unresolved: Array<string> = []
  const swapped = text.replace(secretReference, (match, name: string) => {
    if (!refs.includes(name)) refs.push(name)
    const value = values.get(name)
    if (value === undefined) {
      if (!unresolved.includes(name)) unresolved.push(name)
      return match
    }
    return value
  })
  return { text: swapped, refs, unresolved }
}

/**
 * A workspace's endpoints as given to `create` (from any caller): at most maxBrokers, numbered in
 * order, each secret one of the workspace's broker-held references, and every such reference used.
 */
export const checkBrokers = (
  endpoints: ReadonlyArray<BrokerEndpoint>,
  secrets: ReadonlyArray<SecretRef>,
  /** Host-held secrets that `mitm`'s credential swaps read rather than an endpoint. */
  swapped: ReadonlyArray<string> = []
) =>
  Effect.gen(function*() {
    if (endpoints.length > maxBrokers) {
      return yield* invalid(
        `at most ${maxBrokers} broker endpoints per workspace (${endpoints.length} given)`
      )
    }
    const held = new Set(secrets.filter((s) => s.use === "broker").map((s) => s.name))
    const used = new Set<string>(swapped)
    for (const [i, endpoint] of endpoints.entries()) {
      if (endpoint.guestPort !== brokerBasePort + i) {
        return yield* invalid(
          `broker endpoint ${i} must listen on ${brokerBasePort + i}, not ${endpoint.guestPort}`
        )
      }
      yield* checkUpstream(endpoint.upstream)
      yield* semanticProblem(endpoint)
      for (const name of endpoint.secrets) {
        if (!held.has(name)) {
          return yield* invalid(
            `broker endpoint ${i} swaps in ${name}, which is not a broker-held secret of the workspace`,
            "declare it in the endpoint: secret=NAME=SOURCE"
          )
        }
        if (used.has(name)) return yield* invalid(`broker secret ${name} is declared by two endpoints`)
        used.add(name)
      }
    }
    const unused = [...held].filter((name) => !used.has(name))
    if (unused.length > 0) {
      return yield* invalid(`broker-held secret ${unused.join(", ")} belongs to no endpoint`)
    }
  })

/**
 * An Agentfile's endpoints (`agent.broker`, or `agent.brokers`, not both) as `--broker` texts, to be
 * parsed with the spec file's directory for relative paths. A value holding `;` is refused: it would
 * split into fields of its own.
 */
export const specBrokerTexts = (spec: Pick<Spec, "agent">) =>
  Effect.gen(function*() {
    const one = spec.agent?.broker
    const many = spec.agent?.brokers
    if (one !== undefined && many !== undefined) {
      return yield* invalid(
        "agent.broker and agent.brokers are both given",
        "list every endpoint under agent.brokers"
      )
    }
    const texts: Array<string> = []
    for (const broker of one === undefined ? many ?? [] : [one]) {
      const secrets = broker.secret === undefined
        ? []
        : typeof broker.secret === "string"
        ? [broker.secret]
        : broker.secret
      const fields = [
        `upstream=${broker.upstream}`,
        ...secrets.map((s) => `secret=${s}`),
        ...(broker.env ?? []).map((e) => `base-url-env=${e}`),
        ...(broker.ca === undefined ? [] : [`ca=${broker.ca}`]),
        ...(broker.capture === true ? ["capture"] : []),
        ...(broker.assurance === undefined ? [] : [`assurance=${broker.assurance}`]),
        ...(broker.proxy === true ? ["proxy"] : []),
        ...(broker.connectAllowlist === undefined
          ? []
          : [`connect-allow=${broker.connectAllowlist.join(",")}`]),
        ...(broker.grant === undefined ? [] : [`grant=${broker.grant}`])
      ]
      const split = fields.find((f) => f.includes(";"))
      if (split !== undefined) {
        return yield* invalid(`agent.broker field ${split} holds ';', which separates endpoint fields`)
      }
      texts.push(fields.join(";"))
    }
    return texts
  })

/**
 * Whether a CONNECT to `host:port`, dialled at `address`, is on the endpoint's `connect-allow` list (an
 * empty list allows any): a name entry matches the name the guest asked for, an address entry the
 * address dialled.
 */
export const connectAllowed = (
  entries: ReadonlyArray<string>,
  target: { readonly host: string; readonly address: string; readonly port: number }
): boolean =>
  entries.length === 0 || entries.some((entry) => {
    const portMatch = /:(\d+)$/.exec(entry)
    if (portMatch !== null && Number(portMatch[1]) !== target.port) return false
    const pattern = portMatch === null ? entry : entry.slice(0, -portMatch[0].length)
    const cidr = /^((?:\d{1,3}\.){3}\d{1,3})(?:\/(\d{1,2}))?$/.exec(pattern)
    if (cidr === null) return hostMatches([pattern], target.host)
    const base = octets(cidr[1]!)
    const dialled = octets(target.address)
    return base !== undefined && dialled !== undefined
      && within(dialled, base, cidr[2] === undefined ? 32 : Number(cidr[2]))
  })

/**
 * Grant files of the credential broker's `assurance=semantic` endpoints: the typed operations a guest
 * may perform with the endpoint's credentials, and what the upstream may answer. Where a
 * `trusted-upstream` endpoint relays whatever the guest asks and whatever the upstream answers, a
 * semantic one lets through only a request that one operation of its grant describes exactly, and
 * only an answer that operation's `response` allows, buffered and checked before the guest sees a
 * byte of it.
 *
 * A grant (YAML or JSON, decoded strictly: any other key is an error):
 *
 * - `operations[]`: `name`, `effect` (`read` or `write`), `method`, `route` (`/repos/{owner}/{repo}`:
 *   literal segments, and `{param}` segments of one non-empty path segment each), `pathParameters`
 *   (a param's allowed values), `query[]` and `headers[]` (`name`, `required`, `values`, `pattern`, an
 *   RE2-style regular expression matched against the whole value, `maxBytes`, and for a query
 *   parameter `allowURL`), `body` (`maxBytes`, `contentTypes`, `json`) and `response` (`statuses`,
 *   `contentTypes`, `maxBytes`, `credentialDisclosure: deny-exact`, `json`);
 * - `redirects`: `allow`, `maxHops`, `allowedOrigins` (a bodyless GET or HEAD only; each hop authorized
 *   again).
 *
 * Values are checked as the guest sent them, before the swap: a header declared as
 * `values: ["Bearer @secret:TOKEN"]` admits exactly that reference. Undeclared query parameters and
 * headers are refused, and a declared one may appear once. The connection's own headers (`host`,
 * `content-length`, `content-type`, hop-by-hop ones) are the broker's, and `accept-encoding` is dropped
 * (the answer is checked as plain bytes). A request without a `body` rule carries no body. An answer
 * never carries a value the endpoint holds (exact match in its headers and body), whatever the grant
 * says.
 */
import { Either, Schema } from "effect"
import { decodeStrictFile } from "./Egress.ts"
import { InvalidInput } from "./Errors.ts"

/** Bytes a grant file may have (it travels to the broker on its command line). */
export const maxGrantBytes = 64 * 1024
/** A request body's default limit, when its rule gives none. */
const defaultBodyBytes = 1024 * 1024
/** An answer's default limit: it is held in memory until checked. */
const defaultResponseBytes = 8 * 1024 * 1024
/** A query or header value's default limit. */
const defaultValueBytes = 4096
const defaultHops = 3

/** Why a pattern is not in the RE2 subset (no lookaround, no backreference), or does not compile. */
export const patternProblem = (pattern: string): string | undefined => {
  if (/\(\?<?[=!]/.test(pattern)) return `pattern ${JSON.stringify(pattern)}: lookaround is not RE2`
  if (/\\[1-9]|\\k</.test(pattern)) return `pattern ${JSON.stringify(pattern)}: backreferences are not RE2`
  try {
    new RegExp(pattern, "u")
    return undefined
  } catch (error) {
    return `pattern ${JSON.stringify(pattern)} does not compile: ${(error as Error).message}`
  }
}

const Pattern = Schema.String.pipe(Schema.filter((p) => patternProblem(p) ?? true))
const Positive = Schema.Int.pipe(Schema.positive())

const JsonType = Schema.Literal("string", "number", "integer", "boolean", "object", "array", "null")

/** The shape of a JSON object: its members' types, those required, and whether others may be there. */
export const JsonShape = Schema.Struct({
  type: Schema.Literal("object"),
  properties: Schema.optional(Schema.Record({ key: Schema.String, value: JsonType })),
  required: Schema.optional(Schema.Array(Schema.String)),
  additionalProperties: Schema.optional(Schema.Boolean)
})
export type JsonShape = typeof JsonShape.Type

const valueRule = {
  name: Schema.String.pipe(Schema.minLength(1)),
  required: Schema.optional(Schema.Boolean),
  values: Schema.optional(Schema.Array(Schema.String)),
  pattern: Schema.optional(Pattern),
  maxBytes: Schema.optional(Positive)
}

export const QueryRule = Schema.Struct({ ...valueRule, allowURL: Schema.optional(Schema.Boolean) })
export const HeaderRule = Schema.Struct(valueRule)
type ValueRule = typeof QueryRule.Type

const MediaTypes = Schema.Array(
  Schema.String.pipe(Schema.pattern(/^[a-z0-9!#$&^_.+-]+\/[a-z0-9!#$&^_.+*-]+$/))
)

export const GrantOperation = Schema.Struct({
  name: Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9_.-]{1,64}$/)),
  effect: Schema.Literal("read", "write"),
  method: Schema.String.pipe(Schema.pattern(/^[A-Z]{1,16}$/)),
  route: Schema.String.pipe(
    Schema.pattern(/^(\/([A-Za-z0-9._~!$&'()*+,;=:@%-]+|\{[A-Za-z_][A-Za-z0-9_]*\}))+\/?$|^\/$/)
  ),
  pathParameters: Schema.optional(Schema.Record({ key: Schema.String, value: Schema.Array(Schema.String) })),
  query: Schema.optional(Schema.Array(QueryRule)),
  headers: Schema.optional(Schema.Array(HeaderRule)),
  body: Schema.optional(Schema.Struct({
    maxBytes: Schema.optional(Positive),
    contentTypes: Schema.optional(MediaTypes),
    json: Schema.optional(JsonShape)
  })),
  response: Schema.optional(Schema.Struct({
    statuses: Schema.optional(Schema.Array(Schema.Int.pipe(Schema.between(100, 599)))),
    contentTypes: Schema.optional(MediaTypes),
    maxBytes: Schema.optional(Positive),
    credentialDisclosure: Schema.optional(Schema.Literal("deny-exact")),
    json: Schema.optional(JsonShape)
  }))
})
export type GrantOperation = typeof GrantOperation.Type

export const BrokerGrant = Schema.Struct({
  operations: Schema.Array(GrantOperation).pipe(Schema.minItems(1)),
  redirects: Schema.optional(Schema.Struct({
    allow: Schema.Boolean,
    maxHops: Schema.optional(Schema.Int.pipe(Schema.between(1, 10))),
    allowedOrigins: Schema.optional(Schema.Array(Schema.String))
  }))
})
export type BrokerGrant = typeof BrokerGrant.Type

const routeParams = (route: string) => [...route.matchAll(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g)].map((m) => m[1]!)

/** What a decoded grant must also be: each name used once where it names one thing. */
export const grantProblem = (grant: BrokerGrant): string | undefined => {
  for (const op of grant.operations) {
    const params = routeParams(op.route)
    if (new Set(params).size !== params.length) return `operation ${op.name}: a route parameter appears twice`
    const unknown = Object.keys(op.pathParameters ?? {}).find((p) => !params.includes(p))
    if (unknown !== undefined) return `operation ${op.name}: pathParameters.${unknown} is not in its route`
    for (const [kind, rules] of [["query", op.query ?? []], ["headers", op.headers ?? []]] as const) {
      const names = rules.map((r) => (kind === "headers" ? r.name.toLowerCase() : r.name))
      const twice = names.find((n, i) => names.indexOf(n) !== i)
      if (twice !== undefined) return `operation ${op.name}: ${kind} ${twice} is declared twice`
    }
    const structural = (op.headers ?? []).find((h) => brokerHeaders.has(h.name.toLowerCase()))
    if (structural !== undefined) {
      return `operation ${op.name}: header ${structural.name} is the broker's to set`
    }
  }
  const names = grant.operations.map((o) => o.name)
  const twice = names.find((n, i) => names.indexOf(n) !== i)
  if (twice !== undefined) return `two operations are named ${twice}`
  for (const origin of grant.redirects?.allowedOrigins ?? []) {
    let url: URL | undefined
    try {
      url = new URL(origin)
    } catch {
      url = undefined
    }
    if (url === undefined || url.protocol !== "https:" || url.origin !== origin.replace(/\/$/, "")) {
      return `redirects.allowedOrigins: ${
        JSON.stringify(origin)
      } is not an https origin (https://host[:port])`
    }
  }
  return undefined
}

const grantHolds =
  "a grant holds `operations: [{name, effect: read|write, method, route: /path/{param}, pathParameters, query, headers, body, response}]` and optionally `redirects: {allow, maxHops, allowedOrigins}` (docs/egress.md)"

/** A grant file's text decoded strictly (YAML or JSON), then checked; `source` names it in messages. */
export const decodeBrokerGrant = (text: string, source: string): Either.Either<BrokerGrant, InvalidInput> => {
  const invalid = (detail: string) =>
    new InvalidInput({ message: `${source}: ${detail}`, remediation: grantHolds })
  if (Buffer.byteLength(text) > maxGrantBytes) {
    return Either.left(invalid(`a grant file has at most ${maxGrantBytes / 1024} KiB`))
  }
  return decodeStrictFile(BrokerGrant, text, invalid).pipe(
    Either.flatMap((grant) => {
      const problem = grantProblem(grant)
      return problem === undefined ? Either.right(grant) : Either.left(invalid(problem))
    })
  )
}

/** Headers that belong to one hop, not to the request or answer (RFC 9110 7.6.1). */
export const hopByHopHeaders: ReadonlySet<string> = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade"
])

/**
 * Headers of the connection rather than of the operation: the broker sets or checks them itself
 * (`content-type` against the body rule), and drops `accept-encoding` so that it reads the answer.
 */
export const brokerHeaders: ReadonlySet<string> = new Set([
  "host",
  "content-length",
  "content-type",
  "accept-encoding",
  ...hopByHopHeaders
])

/** A refusal: the rule (for the audit log) and what to tell the guest. */
export interface GrantDenial {
  readonly rule: string
  readonly message: string
}

/** The operation a request matched, or why none did. */
export type Authorization =
  | { readonly _tag: "Allowed"; readonly operation: GrantOperation }
  | { readonly _tag: "Denied"; readonly denial: GrantDenial }

export interface GrantRequest {
  readonly method: string
  /** The path as the guest sent it, under the endpoint (without the query). */
  readonly path: string
  readonly query: ReadonlyArray<readonly [string, string]>
  /** Lower-case names, as node gives them. */
  readonly headers: Readonly<Record<string, string | ReadonlyArray<string> | undefined>>
  /** Whether the request carries a body (a length above 0, or chunks). */
  readonly hasBody: boolean
}

const deny = (rule: string, message: string): GrantDenial => ({ rule, message })

const looksLikeUrl = (value: string) => /^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(value.trim())

const valueDenial = (kind: "query" | "header", rule: ValueRule, value: string): GrantDenial | undefined => {
  const what = `${kind} ${rule.name}`
  if (Buffer.byteLength(value) > (rule.maxBytes ?? defaultValueBytes)) {
    return deny(`${kind}-value`, `${what} is longer than the grant allows`)
  }
  if (rule.values !== undefined && !rule.values.includes(value)) {
    return deny(`${kind}-value`, `${what} is not one of the values the grant allows`)
  }
  if (rule.pattern !== undefined && !new RegExp(`^(?:${rule.pattern})$`, "u").test(value)) {
    return deny(`${kind}-value`, `${what} does not match the grant's pattern`)
  }
  if (kind === "query" && rule.allowURL !== true && looksLikeUrl(value)) {
    return deny("query-value", `${what} holds a URL, which the grant does not allow`)
  }
  return undefined
}

/** The path's segments against the route's, or undefined when it is not this route's shape. */
const matchRoute = (op: GrantOperation, path: string): GrantDenial | undefined | "other" => {
  const want = op.route.split("/").slice(1)
  const got = path.split("/").slice(1)
  if (want.length !== got.length) return "other"
  for (const [i, segment] of want.entries()) {
    const param = /^\{(.+)\}$/.exec(segment)?.[1]
    if (param === undefined) {
      if (segment !== got[i]) return "other"
      continue
    }
    let value: string
    try {
      value = decodeURIComponent(got[i]!)
    } catch {
      return deny("path-parameter", `path parameter ${param} is not valid percent-encoding`)
    }
    if (value === "" || value.includes("/") || value === "." || value === "..") {
      return deny("path-parameter", `path parameter ${param} is not one path segment`)
    }
    const allowed = op.pathParameters?.[param]
    if (allowed !== undefined && !allowed.includes(value)) {
      return deny("path-parameter", `path parameter ${param} is not one of the values the grant allows`)
    }
  }
  return undefined
}

const checkRequest = (op: GrantOperation, request: GrantRequest): GrantDenial | undefined => {
  const routed = matchRoute(op, request.path)
  if (routed === "other") return deny("no-operation", "no operation of the grant has this route")
  if (routed !== undefined) return routed
  const queryRules = op.query ?? []
  const seen = new Set<string>()
  for (const [name, value] of request.query) {
    const rule = queryRules.find((r) => r.name === name)
    if (rule === undefined) return deny("query-undeclared", `query parameter ${name} is not in the grant`)
    if (seen.has(name)) return deny("query-repeated", `query parameter ${name} is given more than once`)
    seen.add(name)
    const denial = valueDenial("query", rule, value)
    if (denial !== undefined) return denial
  }
  const missingQuery = queryRules.find((r) => r.required === true && !seen.has(r.name))
  if (missingQuery !== undefined) {
    return deny("query-missing", `query parameter ${missingQuery.name} is required by the grant`)
  }
  const headerRules = op.headers ?? []
  const present = new Set<string>()
  for (const [name, raw] of Object.entries(request.headers)) {
    if (raw === undefined || brokerHeaders.has(name)) continue
    const rule = headerRules.find((r) => r.name.toLowerCase() === name)
    if (rule === undefined) return deny("header-undeclared", `header ${name} is not in the grant`)
    const values = typeof raw === "string" ? [raw] : raw
    if (values.length !== 1) return deny("header-repeated", `header ${name} is given more than once`)
    present.add(name)
    const denial = valueDenial("header", rule, values[0]!)
    if (denial !== undefined) return denial
  }
  const missingHeader = headerRules.find((r) => r.required === true && !present.has(r.name.toLowerCase()))
  if (missingHeader !== undefined) {
    return deny("header-missing", `header ${missingHeader.name} is required by the grant`)
  }
  if (request.hasBody && op.body === undefined) {
    return deny("body-unexpected", `operation ${op.name} carries no body`)
  }
  if (op.body?.contentTypes !== undefined && request.hasBody) {
    const type = mediaType(request.headers["content-type"])
    if (type === undefined || !op.body.contentTypes.includes(type)) {
      return deny("body-type", `the body's content type is not one the grant allows`)
    }
  }
  return undefined
}

/**
 * The first operation of the grant that describes the request exactly; refused with the rule of the
 * first operation that had its method and route, else `no-operation`.
 */
export const authorize = (grant: BrokerGrant, request: GrantRequest): Authorization => {
  let first: GrantDenial | undefined
  for (const op of grant.operations) {
    if (op.method !== request.method) continue
    const denial = checkRequest(op, request)
    if (denial === undefined) return { _tag: "Allowed", operation: op }
    if (denial.rule !== "no-operation") first ??= denial
  }
  return {
    _tag: "Denied",
    denial: first ?? deny("no-operation", `no operation of the grant is ${request.method} ${request.path}`)
  }
}

/** The media type of a Content-Type value, lower-cased and without parameters. */
export const mediaType = (value: string | ReadonlyArray<string> | undefined): string | undefined => {
  const text = typeof value === "string" ? value : value?.[0]
  const type = text?.split(";")[0]?.trim().toLowerCase()
  return type === undefined || type === "" ? undefined : type
}

const typeOf = (value: unknown) =>
  value === null
    ? "null"
    : Array.isArray(value)
    ? "array"
    : typeof value === "number"
    ? (Number.isInteger(value) ? "integer" : "number")
    : typeof value

/** Why `text` is not a JSON object of `shape`, or undefined when it is. */
export const jsonShapeProblem = (shape: JsonShape, text: string): string | undefined => {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    return "it is not JSON"
  }
  if (typeOf(value) !== "object") return "it is not a JSON object"
  const object = value as Record<string, unknown>
  const missing = (shape.required ?? []).find((k) => !Object.hasOwn(object, k))
  if (missing !== undefined) return `it lacks ${missing}`
  for (const [key, member] of Object.entries(object)) {
    const want = shape.properties?.[key]
    if (want === undefined) {
      if (shape.additionalProperties === false) return `${key} is not a member the grant allows`
      continue
    }
    const got = typeOf(member)
    if (got !== want && !(want === "number" && got === "integer")) return `${key} is not of type ${want}`
  }
  return undefined
}

/** The largest body a request of `op` may carry. */
export const bodyLimit = (op: GrantOperation) => op.body?.maxBytes ?? defaultBodyBytes

/** The request's whole body against the operation's rule. */
export const checkBody = (op: GrantOperation, body: Buffer): GrantDenial | undefined => {
  if (op.body === undefined) {
    return body.length === 0 ? undefined : deny("body-unexpected", `operation ${op.name} carries no body`)
  }
  if (body.length > bodyLimit(op)) return deny("body-too-large", "the body is larger than the grant allows")
  if (op.body.json !== undefined) {
    const problem = jsonShapeProblem(op.body.json, body.toString("utf8"))
    if (problem !== undefined) return deny("body-schema", `the body does not fit the grant: ${problem}`)
  }
  return undefined
}

/** The largest answer of `op` the broker holds before it refuses it. */
export const responseLimit = (op: GrantOperation) => op.response?.maxBytes ?? defaultResponseBytes

export interface GrantResponse {
  readonly status: number
  readonly headers: Readonly<Record<string, string | ReadonlyArray<string> | undefined>>
  readonly body: Buffer
}

/**
 * The upstream's whole answer against the operation's `response` rule, and against disclosure of any
 * value the endpoint holds (exactly, in a header or the body), which is refused whatever the rule says.
 */
export const checkResponse = (
  op: GrantOperation,
  response: GrantResponse,
  held: ReadonlyArray<string>
): GrantDenial | undefined => {
  const rule = op.response
  if (rule?.statuses !== undefined && !rule.statuses.includes(response.status)) {
    return deny("response-status", `the upstream answered ${response.status}, which the grant does not allow`)
  }
  if (response.body.length > responseLimit(op)) {
    return deny("response-too-large", "the upstream's answer is larger than the grant allows")
  }
  if (rule?.contentTypes !== undefined && response.body.length > 0) {
    const type = mediaType(response.headers["content-type"])
    if (type === undefined || !rule.contentTypes.includes(type)) {
      return deny("response-type", "the upstream's answer is not of a content type the grant allows")
    }
  }
  if (rule?.json !== undefined) {
    const problem = jsonShapeProblem(rule.json, response.body.toString("utf8"))
    if (problem !== undefined) {
      return deny("response-schema", `the upstream's answer does not fit the grant: ${problem}`)
    }
  }
  const headerText = JSON.stringify(response.headers)
  const disclosed = held.some((value) =>
    value !== "" && (headerText.includes(JSON.stringify(value).slice(1, -1)) || response.body.includes(value))
  )
  if (disclosed) {
    return deny("credential-disclosure", "the upstream's answer holds a credential of this endpoint")
  }
  return undefined
}

const redirectStatuses: ReadonlySet<number> = new Set([301, 302, 303, 307, 308])

/** Whether an answer is a redirect the grant's `redirects` may follow. */
export const isRedirect = (status: number, location: string | undefined) =>
  redirectStatuses.has(status) && location !== undefined && location !== ""

/**
 * Where a redirect from `current` to `location` may go: the next URL, or why not (redirects not
 * allowed, too many hops, a request with a body, an origin neither the upstream's nor listed).
 */
export const redirectTarget = (
  grant: BrokerGrant,
  request: { readonly method: string; readonly hadBody: boolean; readonly hops: number },
  upstreamOrigin: string,
  current: URL,
  location: string
): Either.Either<URL, GrantDenial> => {
  const redirects = grant.redirects
  if (redirects?.allow !== true) {
    return Either.left(deny("redirect-denied", "the upstream redirected, and the grant follows no redirect"))
  }
  if ((request.method !== "GET" && request.method !== "HEAD") || request.hadBody) {
    return Either.left(deny("redirect-denied", "only a bodyless GET or HEAD follows a redirect"))
  }
  if (request.hops >= (redirects.maxHops ?? defaultHops)) {
    return Either.left(deny("redirect-denied", "more redirects than the grant follows"))
  }
  let next: URL
  try {
    next = new URL(location, current)
  } catch {
    return Either.left(deny("redirect-denied", "the upstream redirected to something that is not a URL"))
  }
  const origins = [upstreamOrigin, ...(redirects.allowedOrigins ?? []).map((o) => o.replace(/\/$/, ""))]
  if (next.protocol !== "https:" || !origins.includes(next.origin)) {
    return Either.left(
      deny("redirect-denied", `the upstream redirected to ${next.origin}, not an allowed origin`)
    )
  }
  return Either.right(next)
}

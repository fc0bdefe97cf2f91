/**
 * Model mediation: what a paired workspace may ask of its model. `off` forwards the guest's
 * connections to the runner as they are; `local-allow` reads each HTTP request, allows it and audits
 * it; `policy` decides each request with a policy file (schema `microagent.model_policy.v1`).
 *
 * A policy's rules are tried in order; the first whose `match` fits the request decides it (an empty
 * or absent match list fits anything). An `allow` rule whose `limits` the request exceeds denies it.
 * No rule matching: the policy's `default`. The audit keeps the request's measures (bytes, message
 * count, max_tokens, tool names), never its text.
 */
import { Either, ParseResult, Schema } from "effect"

export const ModelMediation = Schema.Literal("off", "local-allow", "policy")
export type ModelMediation = typeof ModelMediation.Type

const Names = Schema.optional(Schema.Array(Schema.String))
const Count = Schema.optional(Schema.Int.pipe(Schema.nonNegative()))

export const ModelPolicyRule = Schema.Struct({
  id: Schema.String.pipe(Schema.minLength(1)),
  effect: Schema.Literal("allow", "deny"),
  match: Schema.optional(Schema.Struct({
    workspace_ids: Names,
    capabilities: Names,
    worker_ids: Names,
    /** HTTP methods, e.g. POST. */
    methods: Names,
    /** Request paths; a trailing `*` matches a prefix (`/v1/*`). */
    paths: Names,
    /** The `model` field of the request body. */
    models: Names
  })),
  limits: Schema.optional(Schema.Struct({
    max_request_bytes: Count,
    max_text_bytes: Count,
    max_messages: Count,
    max_tokens: Count,
    /** false: streamed responses are refused. */
    stream: Schema.optional(Schema.Boolean),
    allowed_tool_names: Names
  }))
})
export type ModelPolicyRule = typeof ModelPolicyRule.Type

export const ModelPolicy = Schema.Struct({
  schema_version: Schema.Literal("microagent.model_policy.v1"),
  default: Schema.Literal("allow", "deny"),
  rules: Schema.optionalWith(Schema.Array(ModelPolicyRule), { default: () => [] })
}).pipe(
  Schema.filter((policy) => {
    const seen = new Set<string>()
    for (const rule of policy.rules) {
      if (seen.has(rule.id)) return `rule id "${rule.id}" is used twice`
      seen.add(rule.id)
    }
    return true
  })
)
export type ModelPolicy = typeof ModelPolicy.Type

/** What the mediator knows of one request: where it goes and how big it is, never what it says. */
export interface RequestFacts {
  readonly method: string
  readonly path: string
  readonly model?: string | undefined
  readonly workspaceId?: string | undefined
  readonly capability?: string | undefined
  readonly workerId?: string | undefined
  readonly requestBytes: number
  readonly textBytes: number
  readonly messages: number
  readonly maxTokens?: number | undefined
  readonly stream: boolean
  readonly tools: ReadonlyArray<string>
}

export interface Decision {
  readonly decision: "allow" | "deny"
  /** The rule that decided; absent when the policy's default did. */
  readonly rule?: string | undefined
  readonly reason: string
}

/** Parses a policy file's text; the error is a readable message. */
export const parseModelPolicy = (text: string): Either.Either<ModelPolicy, string> => {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (cause) {
    return Either.left(`not JSON: ${cause instanceof Error ? cause.message : String(cause)}`)
  }
  return Schema.decodeUnknownEither(ModelPolicy, { onExcessProperty: "error" })(json).pipe(
    Either.mapLeft((error) =>
      ParseResult.ArrayFormatter.formatErrorSync(error).map((issue) =>
        `${issue.path.length === 0 ? "(top)" : issue.path.join(".")}: ${issue.message}`
      ).join("\n")
    )
  )
}

const listed = (names: ReadonlyArray<string> | undefined, value: string | undefined) =>
  names === undefined || names.length === 0 || (value !== undefined && names.includes(value))

const pathListed = (paths: ReadonlyArray<string> | undefined, path: string) =>
  paths === undefined || paths.length === 0
  || paths.some((p) => p.endsWith("*") ? path.startsWith(p.slice(0, -1)) : p === path)

const matches = (rule: ModelPolicyRule, facts: RequestFacts) => {
  const m = rule.match
  if (m === undefined) return true
  return listed(m.workspace_ids, facts.workspaceId) && listed(m.capabilities, facts.capability)
    && listed(m.worker_ids, facts.workerId)
    && listed(m.methods?.map((x) => x.toUpperCase()), facts.method.toUpperCase())
    && pathListed(m.paths, facts.path) && listed(m.models, facts.model)
}

/** The first limit of the rule the request exceeds, or undefined. */
const exceeded = (rule: ModelPolicyRule, facts: RequestFacts): string | undefined => {
  const l = rule.limits
  if (l === undefined) return undefined
  if (l.max_request_bytes !== undefined && facts.requestBytes > l.max_request_bytes) {
    return `the request is ${facts.requestBytes} bytes, over max_request_bytes ${l.max_request_bytes}`
  }
  if (l.max_text_bytes !== undefined && facts.textBytes > l.max_text_bytes) {
    return `its text is ${facts.textBytes} bytes, over max_text_bytes ${l.max_text_bytes}`
  }
  if (l.max_messages !== undefined && facts.messages > l.max_messages) {
    return `it has ${facts.messages} messages, over max_messages ${l.max_messages}`
  }
  if (l.max_tokens !== undefined) {
    if (facts.maxTokens === undefined) return `it sets no max_tokens (the policy caps it at ${l.max_tokens})`
    if (facts.maxTokens > l.max_tokens) {
      return `max_tokens ${facts.maxTokens} is over the limit ${l.max_tokens}`
    }
  }
  if (l.stream === false && facts.stream) return "streaming is not allowed"
  if (l.allowed_tool_names !== undefined) {
    const refused = facts.tools.filter((t) => !l.allowed_tool_names!.includes(t))
    if (refused.length > 0) return `tool ${refused.join(", ")} is not allowed`
  }
  return undefined
}

export const evaluateModelPolicy = (policy: ModelPolicy, facts: RequestFacts): Decision => {
  for (const rule of policy.rules) {
    if (!matches(rule, facts)) continue
    if (rule.effect === "deny") {
      return { decision: "deny", rule: rule.id, reason: `rule ${rule.id} denies it` }
    }
    const over = exceeded(rule, facts)
    return over === undefined
      ? { decision: "allow", rule: rule.id, reason: `rule ${rule.id} allows it` }
      : { decision: "deny", rule: rule.id, reason: `rule ${rule.id}: ${over}` }
  }
  return { decision: policy.default, reason: `no rule matched; the default is ${policy.default}` }
}

const utf8Bytes = (s: string) => Buffer.byteLength(s, "utf8")

/** Text bytes of an OpenAI message content: a string, or parts of which the `text` ones count. */
const contentBytes = (content: unknown): number =>
  typeof content === "string"
    ? utf8Bytes(content)
    : Array.isArray(content)
    ? content.reduce(
      (sum: number, part) =>
        sum + (typeof part === "object" && part !== null && typeof part.text === "string"
          ? utf8Bytes(part.text)
          : 0),
      0
    )
    : 0

/**
 * The facts of an OpenAI-compatible request (`/v1/chat/completions`, `/v1/completions`, ...): its model,
 * message count and text size, `max_tokens` (or `max_completion_tokens`), `stream` and tool names.
 * A body that is not a JSON object counts only its bytes.
 */
export const requestFacts = (
  method: string,
  path: string,
  body: Uint8Array,
  who: { readonly workspaceId?: string | undefined } = {}
): RequestFacts => {
  let json: Record<string, unknown> = {}
  if (body.length > 0) {
    try {
      const parsed: unknown = JSON.parse(Buffer.from(body).toString("utf8"))
      if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) {
        json = parsed as Record<string, unknown>
      }
    } catch {
      // Not JSON: measured by its bytes only.
    }
  }
  const messages = Array.isArray(json.messages) ? json.messages : []
  const prompt = json.prompt
  const promptBytes = typeof prompt === "string"
    ? utf8Bytes(prompt)
    : Array.isArray(prompt)
    ? prompt.reduce((sum: number, p) => sum + (typeof p === "string" ? utf8Bytes(p) : 0), 0)
    : 0
  const tokens = [json.max_tokens, json.max_completion_tokens].find((v) => typeof v === "number")
  const tools = Array.isArray(json.tools)
    ? json.tools.flatMap((tool) => {
      const name = typeof tool === "object" && tool !== null
        ? (tool as { function?: { name?: unknown }; name?: unknown }).function?.name
          ?? (tool as { name?: unknown }).name
        : undefined
      return typeof name === "string" ? [name] : []
    })
    : []
  return {
    method: method.toUpperCase(),
    path: path.split("?")[0] ?? path,
    model: typeof json.model === "string" ? json.model : undefined,
    workspaceId: who.workspaceId,
    requestBytes: body.length,
    textBytes: promptBytes
      + messages.reduce(
        (sum: number, m) =>
          sum
          + (typeof m === "object" && m !== null ? contentBytes((m as { content?: unknown }).content) : 0),
        0
      ),
    messages: messages.length,
    maxTokens: tokens as number | undefined,
    stream: json.stream === true,
    tools
  }
}

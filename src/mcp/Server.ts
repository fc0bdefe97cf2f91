/**
 * The MCP server (`microagent serve mcp`): the tool table registered on @effect/ai's McpServer, spoken
 * over stdio. Every tool validates its arguments against its Schema, answers in one envelope
 * (`{ok, result | error, meta}`), replays keyed mutations, and previews destructive ones on request.
 * Nothing but protocol goes to stdout.
 */
import { CallToolResult, McpServerClient, Tool as McpTool, ToolAnnotations } from "@effect/ai/McpSchema"
import * as McpServer from "@effect/ai/McpServer"
import * as NodeSink from "@effect/platform-node/NodeSink"
import * as NodeStream from "@effect/platform-node/NodeStream"
import { RpcServer } from "@effect/rpc"
import {
  Cause,
  Clock,
  Deferred,
  Effect,
  Either,
  JSONSchema,
  Layer,
  ParseResult,
  Ref,
  Schedule,
  Schema
} from "effect"
import {
  type ErrorBody,
  ErrorKind,
  InvalidInput,
  isMicroagentError,
  type MicroagentError,
  Permanent,
  toErrorBody,
  Transient
} from "../domain/Errors.ts"
import { HostAccessPolicy } from "../domain/HostAccess.ts"
import { version } from "../domain/Version.ts"
import type { Backend } from "../domain/Workspace.ts"
import { isRpcClientError, MicroagentClient } from "../rpc/Client.ts"
import {
  aliasFields,
  aliasTools,
  confirmTokenField,
  makeConfirmTokens,
  normalizeArguments,
  principalField
} from "./Compat.ts"
import { confineClient, type HostGate } from "./Confined.ts"
import { HostAccess } from "./HostAccess.ts"
import { Idempotency } from "./Idempotency.ts"
import { makeStdioProtocol } from "./StdioProtocol.ts"
import { type AnyTool, defineTool, Envelope, PreviewResult, type ToolContext } from "./Tool.ts"
import { describeTool, tools } from "./Tools.ts"

export interface McpOptions {
  /** The backend of new workspaces when a call names none. */
  readonly defaultBackend: Backend
}

/** The arguments every mutating tool takes besides its own. */
const idempotencyField = {
  idempotency_key: Schema.optional(
    Schema.String.pipe(Schema.minLength(1), Schema.maxLength(256)).annotations({
      description: "repeat a call with the same key within 15 minutes to get its first result again "
        + "instead of doing it twice; the same key with other arguments is a conflict"
    })
  )
}

const previewField = {
  preview: Schema.optional(
    Schema.Boolean.annotations({ description: "say what the call would do, and do nothing" })
  )
}

/** The arguments common to every tool of a kind: `principal`, `idempotency_key`, `preview`, `confirm_token`. */
const commonFields = (tool: AnyTool) => ({
  ...principalField,
  ...(tool.kind === "read" ? {} : idempotencyField),
  ...(tool.kind === "destructive" ? { ...previewField, ...confirmTokenField } : {})
})

/** A tool's whole input: its own arguments, and the common ones its kind takes. */
export const inputSchemaOf = (
  tool: AnyTool
): Schema.Schema<Record<string, unknown>, Record<string, unknown>> =>
  Schema.Struct({ ...tool.input, ...commonFields(tool) }) as unknown as Schema.Schema<
    Record<string, unknown>,
    Record<string, unknown>
  >

/**
 * A tool's input as JSON Schema, with the original microagent's names for its arguments (Compat.ts),
 * which are accepted and converted before the input is decoded.
 */
export const inputJsonSchemaOf = (tool: AnyTool): Record<string, unknown> =>
  jsonSchemaOf(
    Schema.Struct({
      ...tool.input,
      ...aliasFields(tool.name),
      ...commonFields(tool)
    }) as unknown as Schema.Schema<
      Record<string, unknown>,
      Record<string, unknown>
    >
  )

/** Inlines `$ref`s, since not every MCP client resolves `$defs` (our schemas are not recursive). */
const inline = (node: unknown, defs: Record<string, unknown>): unknown => {
  if (Array.isArray(node)) return node.map((item) => inline(item, defs))
  if (node === null || typeof node !== "object") return node
  const { $ref, ...rest } = node as Record<string, unknown>
  const out: Record<string, unknown> = {}
  if (typeof $ref === "string" && $ref.startsWith("#/$defs/")) {
    Object.assign(out, inline(defs[$ref.slice("#/$defs/".length)], defs))
  }
  for (const [key, value] of Object.entries(rest)) {
    // Effect marks `unknown` and friends with a fixed `$id`, which may not repeat within one schema.
    if (key === "$id" && typeof value === "string" && value.startsWith("/schemas/")) continue
    out[key] = inline(value, defs)
  }
  return out
}

/** The JSON Schema of a Schema's encoded form, self-contained. */
export const jsonSchemaOf = (schema: Schema.Schema<any, any, never>): Record<string, unknown> => {
  const { $defs, $schema: _, ...rest } = JSONSchema.make(schema) as unknown as Record<string, unknown>
  return inline(rest, ($defs ?? {}) as Record<string, unknown>) as Record<string, unknown>
}

const Operation = Schema.Struct({
  name: Schema.String,
  title: Schema.String,
  description: Schema.String,
  inputSchema: Schema.Unknown,
  outputSchema: Schema.Unknown,
  /** Destructive tools: the result of `preview: true`. */
  previewSchema: Schema.optional(Schema.Unknown),
  sideEffects: Schema.Array(Schema.String),
  /** `read_only`, or `keyed_replay`: a repeat with the same `idempotency_key` replays the first result. */
  idempotency: Schema.Literal("read_only", "keyed_replay"),
  destructive: Schema.Boolean,
  costClass: Schema.String,
  errors: Schema.Array(ErrorKind)
})

const Manifest = Schema.Struct({
  service: Schema.Literal("microagent"),
  version: Schema.String,
  transport: Schema.Literal("mcp_stdio"),
  defaultBackend: Schema.String,
  /** What MCP clients may touch on the server's host: roots, secrets, and the rules. */
  hostAccess: HostAccessPolicy,
  envelope: Schema.Unknown,
  operations: Schema.Array(Operation)
})

const describeEntry = (all: () => ReadonlyArray<AnyTool>) =>
  defineTool({
    name: describeTool,
    title: "Describe microagent's operations",
    description: "Every operation of this server with its input and output JSON Schema, side effects, "
      + "idempotency and cost class, the envelope every result comes in, and the host-access policy in "
      + "force (the host roots and secrets MCP clients may use).",
    input: {},
    output: Manifest,
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: (_args, context: ToolContext) =>
      Effect.map(context.policy, (hostAccess) => ({
        service: "microagent" as const,
        version,
        transport: "mcp_stdio" as const,
        defaultBackend: context.defaultBackend,
        hostAccess,
        envelope: jsonSchemaOf(Envelope),
        operations: all().map((tool) => ({
          name: tool.name,
          title: tool.title,
          description: tool.description,
          inputSchema: inputJsonSchemaOf(tool),
          outputSchema: jsonSchemaOf(tool.output),
          ...(tool.kind === "destructive" ? { previewSchema: jsonSchemaOf(PreviewResult) } : {}),
          sideEffects: tool.sideEffects,
          idempotency: tool.kind === "read" ? "read_only" as const : "keyed_replay" as const,
          destructive: tool.kind === "destructive",
          costClass: tool.cost,
          errors: ErrorKind.literals
        }))
      }))
  })

/**
 * Every tool this server offers: the table, the original's names for some of them, and
 * `microagent.describe` over all.
 */
export const allTools: ReadonlyArray<AnyTool> = [
  ...tools,
  ...aliasTools(tools),
  describeEntry(() => allTools)
]

/** The arguments a tool takes, common ones and the original's names included. */
const argumentNames = (tool: AnyTool): ReadonlyArray<string> => [
  ...Object.keys(tool.input),
  ...Object.keys(aliasFields(tool.name)),
  ...Object.keys(commonFields(tool))
]

/** Arguments given that the tool does not take. */
const unknownArguments = (tool: AnyTool, payload: unknown): ReadonlyArray<string> => {
  if (typeof payload !== "object" || payload === null || Array.isArray(payload)) return []
  const known = new Set(argumentNames(tool))
  return Object.keys(payload).filter((key) => !known.has(key))
}

/** One line per offending argument. */
const formatIssues = (error: ParseResult.ParseError): string =>
  ParseResult.ArrayFormatter.formatErrorSync(error)
    // An optional argument's other alternative ("or undefined") says nothing useful.
    .filter((issue) => !issue.message.startsWith("Expected undefined, actual"))
    .map((issue) => `${issue.path.length > 0 ? `${issue.path.join(".")}: ` : ""}${issue.message}`)
    .join("; ")

type Body = { readonly ok: true; readonly result: unknown } | {
  readonly ok: false
  readonly error: ErrorBody
}

const failed = (error: MicroagentError): Body => ({ ok: false, error: toErrorBody(error) })

const classify = (cause: Cause.Cause<unknown>): MicroagentError => {
  const failure = Cause.failureOption(cause)
  if (failure._tag === "Some") {
    const error = failure.value
    if (isMicroagentError(error)) return error
    if (isRpcClientError(error)) {
      return new Transient({
        message: `lost the connection to the microagent runtime: ${error.message}`,
        remediation: "retry; the runtime restarts on demand",
        retryAfterMs: 1000
      })
    }
  }
  return new Permanent({
    message: `internal error: ${Cause.pretty(cause).split("\n")[0]}`,
    remediation: "this is a bug in microagent; the server's stderr has the details"
  })
}

/** Registers the tools on the McpServer; calls go to `MicroagentClient`. */
export const registerTools = (options: McpOptions) =>
  Effect.gen(function*() {
    const server = yield* McpServer.McpServer
    const client = yield* MicroagentClient
    const idempotency = yield* Idempotency
    const inFlight = yield* InFlight
    const access = yield* HostAccess
    const confirmTokens = makeConfirmTokens()

    const execute = (tool: AnyTool, args: unknown, preview: boolean) =>
      Effect.gen(function*() {
        // The host checks ask this call's MCP client for its roots when it declares them.
        const peer = yield* McpServerClient
        const gate: HostGate = {
          check: (path, mode, denial) =>
            Effect.provideService(access.check(path, mode, denial), McpServerClient, peer),
          secretRefs: (texts, denial) =>
            Effect.provideService(access.secretRefs(texts, denial), McpServerClient, peer),
          checkRefs: (refs, denial) =>
            Effect.provideService(access.checkRefs(refs, denial), McpServerClient, peer)
        }
        const context: ToolContext = {
          defaultBackend: options.defaultBackend,
          host: gate,
          policy: Effect.provideService(access.policy, McpServerClient, peer)
        }
        return yield* run(tool, args, preview, context, confineClient(client, gate, tool.name))
      })

    const run = (
      tool: AnyTool,
      args: unknown,
      preview: boolean,
      context: ToolContext,
      confined: typeof client
    ): Effect.Effect<Body> => {
      const work = preview && tool.preview !== undefined
        ? tool.preview(args, context).pipe(
          // The token binds a later call to exactly the arguments previewed here.
          Effect.map((result) => ({ ...result, confirm_token: confirmTokens.issue(tool.name, args) }))
        )
        : tool.run(args, context)
      const schema: Schema.Schema<any, any, never> = preview ? PreviewResult : tool.output
      return work.pipe(
        Effect.flatMap((result) => Schema.encodeUnknown(schema)(result)),
        Effect.map((result): Body => ({ ok: true, result })),
        Effect.provideService(MicroagentClient, confined),
        Effect.catchAllCause((cause) =>
          Cause.isInterruptedOnly(cause)
            ? Effect.failCause(cause as Cause.Cause<never>)
            : Effect.gen(function*() {
              const error = classify(cause)
              if (error.message.startsWith("internal error")) {
                yield* Effect.logError(`${tool.name} failed`, cause)
              }
              return failed(error)
            })
        )
      )
    }

    const call = (tool: AnyTool, payload: unknown) =>
      Effect.gen(function*() {
        const started = yield* Clock.currentTimeMillis
        const normalized = normalizeArguments(tool.name, payload ?? {})
        const decoded = Schema.decodeUnknownEither(inputSchemaOf(tool), {
          onExcessProperty: "error",
          errors: "all"
        })(
          Either.getOrElse(normalized, () => ({}))
        )
        // An empty Struct accepts any object, so a tool without arguments checks for extra ones itself.
        const excess = unknownArguments(tool, payload)
        let body: Body
        const extra: { idempotencyReplay?: boolean; preview?: boolean; principal?: string } = {}
        if (excess.length > 0) {
          body = failed(
            new InvalidInput({
              message: `${tool.name}: invalid arguments: ${
                excess.map((key) => `${key}: is unexpected`).join("; ")
              } (${tool.name} takes ${
                argumentNames(tool).length === 0 ? "no arguments" : argumentNames(tool).join(", ")
              })`,
              remediation: `see the input schema of ${tool.name} in tools/list or microagent.describe`
            })
          )
        } else if (Either.isLeft(normalized)) {
          body = failed(normalized.left)
        } else if (Either.isLeft(decoded)) {
          body = failed(
            new InvalidInput({
              message: `${tool.name}: invalid arguments: ${formatIssues(decoded.left)}`,
              remediation: `see the input schema of ${tool.name} in tools/list or microagent.describe`
            })
          )
        } else {
          const { confirm_token: token, idempotency_key: key, preview, principal, ...args } = decoded.right as
            & Record<string, unknown>
            & {
              idempotency_key?: string
              preview?: boolean
              principal?: string
              confirm_token?: string
            }
          if (principal !== undefined) extra.principal = principal
          const confirmed = token === undefined || preview === true
            ? Either.void
            : confirmTokens.check(tool.name, args, token)
          if (Either.isLeft(confirmed)) {
            body = failed(confirmed.left)
          } else if (preview === true) {
            extra.preview = true
            body = yield* execute(tool, args, true)
          } else if (key === undefined || tool.kind === "read") {
            body = yield* execute(tool, args, false)
          } else {
            const { idempotency_key: _key, preview: _preview, principal: _principal, ...raw } =
              (payload ?? {}) as Record<string, unknown>
            const outcome = yield* idempotency.once(
              { tool: tool.name, key, args: raw },
              execute(tool, args, false),
              // A retryable failure is not kept: the retry should run. Nor is a denial: once the operator or
              // the client grants the path, the same call should run.
              (envelope) =>
                (envelope as Body).ok
                || !((envelope as { error: ErrorBody }).error.retryable
                  || (envelope as { error: ErrorBody }).error.kind === "policy_denied")
            ).pipe(
              Effect.catchAll((error) => Effect.succeed({ envelope: failed(error), replayed: false }))
            )
            body = outcome.envelope as Body
            if (outcome.replayed) extra.idempotencyReplay = true
          }
        }
        const durationMs = (yield* Clock.currentTimeMillis) - started
        const envelope = { ...body, meta: { tool: tool.name, durationMs, ...extra } }
        return new CallToolResult({
          isError: !body.ok,
          structuredContent: envelope,
          content: [{ type: "text", text: JSON.stringify(envelope) }]
        })
      }).pipe(inFlight.track)

    for (const tool of allTools) {
      yield* server.addTool({
        tool: new McpTool({
          name: tool.name,
          title: tool.title,
          description: tool.description,
          inputSchema: inputJsonSchemaOf(tool),
          annotations: new ToolAnnotations({
            title: tool.title,
            readOnlyHint: tool.kind === "read",
            destructiveHint: tool.kind === "destructive",
            idempotentHint: tool.kind === "read",
            openWorldHint: false
          })
        }),
        handle: (payload) => call(tool, payload)
      })
    }
  })

/** Counts the tool calls under way, so that the server can finish them before it exits. */
class InFlight extends Effect.Service<InFlight>()("microagent/mcp/InFlight", {
  effect: Effect.gen(function*() {
    const count = yield* Ref.make(0)
    return {
      track: <A, E, R>(effect: Effect.Effect<A, E, R>) =>
        Effect.acquireUseRelease(
          Ref.update(count, (n) => n + 1),
          () => effect,
          () => Ref.update(count, (n) => n - 1)
        ),
      idle: Ref.get(count).pipe(
        Effect.repeat({ until: (n) => n === 0, schedule: Schedule.spaced("50 millis") })
      )
    }
  })
}) {}

/**
 * Serves MCP on this process's stdin and stdout until the client closes stdin, then finishes the calls
 * under way and returns. Bad input is answered and never ends the server (StdioProtocol.ts).
 */
export const serveStdio = (options: McpOptions) =>
  Effect.scoped(Effect.gen(function*() {
    const scope = yield* Effect.scope
    const closed = yield* Deferred.make<void>()
    const access = yield* HostAccess
    const protocol = yield* makeStdioProtocol({
      stdin: NodeStream.stdin,
      stdout: NodeSink.stdout,
      onEnd: Deferred.succeed(closed, undefined).pipe(Effect.asVoid),
      observer: { onInitialize: access.initialized, onRootsChanged: access.rootsChanged }
    })
    const inFlight = yield* InFlight
    // Tools are registered before the server handles its first message, so `initialize` sees them.
    const registry = McpServer.McpServer.layer
    const running = Layer.scopedDiscard(Effect.forkScoped(McpServer.run({ name: "microagent", version })))
    yield* Layer.buildWithScope(
      running.pipe(
        Layer.provide(Layer.effectDiscard(registerTools(options)).pipe(Layer.provideMerge(registry)))
      ),
      scope
    ).pipe(Effect.provideService(RpcServer.Protocol, protocol), Effect.provideService(InFlight, inFlight))
    yield* Deferred.await(closed)
    yield* inFlight.idle
    // Let the last replies drain to stdout.
    yield* Effect.sleep("100 millis")
  })).pipe(Effect.provide(InFlight.Default))

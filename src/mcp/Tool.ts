/**
 * What an MCP tool is here: a name, an input made of domain Schemas, an output Schema, what it changes
 * and costs, and a thin call into the RPC API. The server adds `idempotency_key` to mutating tools and
 * `preview` to destructive ones, validates arguments, and wraps every outcome in one envelope.
 */
import type { RpcClientError } from "@effect/rpc"
import { type Effect, Schema } from "effect"
import { ErrorKind, type MicroagentError } from "../domain/Errors.ts"
import type { HostAccessPolicy } from "../domain/HostAccess.ts"
import type { Backend } from "../domain/Workspace.ts"
import type { MicroagentClient } from "../rpc/Client.ts"
import type { HostGate } from "./Confined.ts"

/** `read`: no side effects; `mutate`: changes state, takes `idempotency_key`; `destructive`: also `preview`. */
export type ToolKind = "read" | "mutate" | "destructive"

/** Roughly what a call costs the host. */
export type CostClass = "host_compute_and_storage" | "host_io" | "metadata"

export interface ToolContext {
  /** The backend of new workspaces when the call names none. */
  readonly defaultBackend: Backend
  /** Host paths and secret references, checked against what the operator granted (HostAccess). */
  readonly host: HostGate
  /** The host-access policy in force for this call. */
  readonly policy: Effect.Effect<HostAccessPolicy>
}

type Failure = MicroagentError | RpcClientError.RpcClientError

export interface ToolDefinition<F extends Schema.Struct.Fields, A, I> {
  readonly name: string
  readonly title: string
  readonly description: string
  readonly input: F
  readonly output: Schema.Schema<A, I>
  readonly kind: ToolKind
  readonly sideEffects: ReadonlyArray<string>
  readonly cost: CostClass
  readonly run: (
    args: Schema.Struct.Type<F>,
    context: ToolContext
  ) => Effect.Effect<A, Failure, MicroagentClient>
  /** Destructive tools: what `run` would do, found out without changing anything. */
  readonly preview?: (args: Schema.Struct.Type<F>, context: ToolContext) => Effect.Effect<
    PreviewResult,
    Failure,
    MicroagentClient
  >
}

/** A tool with its types erased, as kept in the table. */
export interface AnyTool {
  readonly name: string
  readonly title: string
  readonly description: string
  readonly input: Schema.Struct.Fields
  readonly output: Schema.Schema<any, any>
  readonly kind: ToolKind
  readonly sideEffects: ReadonlyArray<string>
  readonly cost: CostClass
  readonly run: (args: any, context: ToolContext) => Effect.Effect<unknown, Failure, MicroagentClient>
  readonly preview?: (
    args: any,
    context: ToolContext
  ) => Effect.Effect<PreviewResult, Failure, MicroagentClient>
}

/** A Schema with the description a tool's input schema shows for it. */
export const described = <S extends Schema.Schema.Any>(schema: S, description: string) =>
  schema.annotations({ description }) as S

/** An optional, described input field. */
export const optional = <S extends Schema.Schema.Any>(schema: S, description: string) =>
  Schema.optional(described(schema, description))

/** `timeoutSeconds` → `timeout_seconds`, as the type of a name. */
export type SnakeCase<S extends string> = S extends `${infer Head}${infer Tail}`
  ? `${Head extends Lowercase<Head> ? Head : `_${Lowercase<Head>}`}${SnakeCase<Tail>}`
  : S

/** `timeoutSeconds` → `timeout_seconds`: a request field's name as the MCP tools spell it. */
export const snakeCase = <S extends string>(name: S): SnakeCase<S> =>
  name.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`) as SnakeCase<S>

/**
 * Fields of an operation's request (domain/Requests.ts) as a tool's input: `fields` under their
 * snake_case names, each with the description the tool shows and otherwise the request's own Schema;
 * `from` takes a tool's arguments back to the request's names (absent ones left out).
 */
export const requestInput = <F extends Schema.Struct.Fields, K extends keyof F & string>(
  fields: F,
  descriptions: { readonly [P in K]: string }
): {
  readonly fields: { readonly [P in K as SnakeCase<P>]: F[P] }
  readonly from: (
    args: { readonly [P in K as SnakeCase<P>]?: unknown }
  ) => { readonly [P in K & keyof Schema.Struct.Type<F>]?: Schema.Struct.Type<F>[P] }
} => {
  const keys = Object.keys(descriptions) as Array<K>
  return {
    fields: Object.fromEntries(
      keys.map((key) => [snakeCase(key), fields[key]!.annotations({ description: descriptions[key] })])
    ) as never,
    from: (args) =>
      Object.fromEntries(keys.flatMap((key) => {
        const value = (args as Record<string, unknown>)[snakeCase(key)]
        return value === undefined ? [] : [[key, value]]
      })) as never
  }
}

export const defineTool = <F extends Schema.Struct.Fields, A, I>(
  definition: ToolDefinition<F, A, I>
): AnyTool => definition as unknown as AnyTool

export const ErrorBodySchema = Schema.Struct({
  kind: ErrorKind,
  message: Schema.String,
  remediation: Schema.String,
  retryable: Schema.Boolean,
  retry_after_ms: Schema.optional(Schema.Number),
  usage: Schema.optional(Schema.Boolean)
})

/** What a destructive tool answers with `preview: true`. */
export const PreviewResult = Schema.Struct({
  preview: Schema.Literal(true),
  /** The workspace the call acts on (workspace tools). */
  workspace: Schema.optional(Schema.String),
  /** What else the call acts on: an image reference, a volume, a network. */
  target: Schema.optional(Schema.String),
  /** The workspace's state now; absent when there is no such workspace. */
  state: Schema.optional(Schema.String),
  /** What the call would do, in order; empty when it would do nothing. */
  actions: Schema.Array(Schema.String),
  /** The error the call would fail with, if it would. */
  wouldFail: Schema.optional(ErrorBodySchema),
  /** Pass to the call itself (with the same arguments) to have it refused if they changed. */
  confirm_token: Schema.optional(Schema.String)
})
export type PreviewResult = typeof PreviewResult.Type

export const Meta = Schema.Struct({
  tool: Schema.String,
  durationMs: Schema.Number,
  idempotencyReplay: Schema.optional(Schema.Boolean),
  preview: Schema.optional(Schema.Boolean),
  /** The caller's `principal`, when it gave one. */
  principal: Schema.optional(Schema.String)
})

/** The envelope of every tool result, success or failure. */
export const Envelope = Schema.Union(
  Schema.Struct({ ok: Schema.Literal(true), result: Schema.Unknown, meta: Meta }),
  Schema.Struct({ ok: Schema.Literal(false), error: ErrorBodySchema, meta: Meta })
)

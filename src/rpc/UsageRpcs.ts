/**
 * The procedures of a workspace's resource use: `stats` (a sample of its VMM from the host) and
 * `resize` (its root disk, offline).
 */
import { Rpc } from "@effect/rpc"
import { Schema } from "effect"
import { MicroagentError } from "../domain/Errors.ts"
import { ResizeResult, WorkspaceStats } from "../domain/Usage.ts"

export const usageRpcs = [
  /** One sample of a running workspace; CPU use is measured over `intervalSeconds` (0.5 when absent). */
  Rpc.make("stats", {
    payload: {
      name: Schema.String,
      intervalSeconds: Schema.optional(Schema.Number.pipe(Schema.between(0.05, 60)))
    },
    success: WorkspaceStats,
    error: MicroagentError
  }),
  /** Grows (or shrinks down to its content) a stopped workspace's root disk; `preview` changes nothing. */
  Rpc.make("resize", {
    payload: {
      name: Schema.String,
      sizeMiB: Schema.Int.pipe(Schema.positive()),
      preview: Schema.optional(Schema.Boolean)
    },
    success: Schema.Union(
      ResizeResult,
      Schema.Struct({ workspace: Schema.String, from_size_mib: Schema.Number, to_size_mib: Schema.Number })
    ),
    error: MicroagentError
  })
] as const

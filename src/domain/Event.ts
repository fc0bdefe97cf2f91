/**
 * Lifecycle events: an append-only, bounded history per workspace.
 */
import { Schema } from "effect"
import { State } from "./State.ts"

export class WorkspaceEvent extends Schema.Class<WorkspaceEvent>("WorkspaceEvent")({
  id: Schema.Int,
  workspace: Schema.String,
  at: Schema.String,
  /** What happened: a state transition's name, or `created`, `exec`, `deleted`, … */
  type: Schema.String,
  /** The state after the event, for transitions. */
  state: Schema.optional(State),
  detail: Schema.String
}) {}

/** Events kept per workspace; older ones are dropped. */
export const maxEventsPerWorkspace = 1024

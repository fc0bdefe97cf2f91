/**
 * The durable record of workspaces and their events. Every change of state goes through `transition`,
 * which applies the state machine atomically across processes.
 */
import { Context, type Effect, type Option } from "effect"
import type { Conflict, NotFound, Permanent } from "../domain/Errors.ts"
import type { WorkspaceEvent } from "../domain/Event.ts"
import type { State, Transition } from "../domain/State.ts"
import type { Workspace } from "../domain/Workspace.ts"

export type StoreError = Permanent

export interface EventInput {
  readonly type: string
  readonly state?: State
  readonly detail?: string
}

export interface StateStoreShape {
  /** Records a new workspace; a taken name is a `Conflict`. */
  readonly create: (workspace: Workspace) => Effect.Effect<Workspace, Conflict | StoreError>
  readonly get: (name: string) => Effect.Effect<Workspace, NotFound | StoreError>
  readonly find: (name: string) => Effect.Effect<Option.Option<Workspace>, StoreError>
  readonly list: Effect.Effect<ReadonlyArray<Workspace>, StoreError>
  /**
   * Moves a workspace through the state machine and applies `patch` in the same atomic step.
   * Of two processes racing for the same transition, one wins and the other gets `Conflict`.
   */
  readonly transition: (
    name: string,
    transition: Transition,
    options?: {
      readonly patch?: (workspace: Workspace) => Workspace
      readonly detail?: string
      /**
       * Only while the record is still this start's (its `sessionId`): a decision taken about one VM
       * is not applied to the next one a restart made meanwhile. Otherwise `Conflict`, and nothing changes.
       */
      readonly session?: string
    }
  ) => Effect.Effect<Workspace, Conflict | NotFound | StoreError>
  /** Changes fields other than the state. */
  readonly update: (
    name: string,
    patch: (workspace: Workspace) => Workspace
  ) => Effect.Effect<Workspace, NotFound | StoreError>
  /** Removes the record and its events. Returns whether there was one. */
  readonly remove: (name: string) => Effect.Effect<boolean, StoreError>
  /**
   * Writes a record as it is, whatever is stored under its name (recovery of `state.db`: re-registering
   * a workspace from its manifest, marking one whose disk is gone `failed`), with a `recovered` event.
   */
  readonly recover: (workspace: Workspace, detail: string) => Effect.Effect<Workspace, StoreError>
  /**
   * Writes `workspace`'s manifest (the copy of its record kept beside its disk) into `workspaceDir`, if
   * that directory exists: `create` writes the first one into its staging directory. A failure is logged,
   * not raised (the next write of the record rewrites it).
   */
  readonly writeManifest: (workspaceDir: string, workspace: Workspace) => Effect.Effect<void>
  readonly appendEvent: (name: string, event: EventInput) => Effect.Effect<void, StoreError>
  readonly events: (
    name: string,
    options?: { readonly afterId?: number; readonly limit?: number }
  ) => Effect.Effect<ReadonlyArray<WorkspaceEvent>, StoreError>
}

export class StateStore extends Context.Tag("microagent/StateStore")<StateStore, StateStoreShape>() {}

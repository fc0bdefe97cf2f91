/**
 * The backends of a long-lived process (the RPC server, the MCP server, a host application): each
 * backend's services are built once, on first use, and kept for the life of the layer; every operation
 * runs against the backend its workspace was created on, and new workspaces get the default unless
 * the request names another.
 */
import type { SqlClient } from "@effect/sql"
import { Context, Effect, ExecutionStrategy, Exit, Layer, Scope, Stream } from "effect"
import type { Unsupported } from "../../domain/Errors.ts"
import type { Backend } from "../../domain/Workspace.ts"
import type { Home } from "../../services/Home.ts"
import { StateStore } from "../../services/StateStore.ts"
import { backendLayer, type BackendServices, defaultBackend } from "./Backends.ts"

export interface WorkspaceBackendsShape {
  /** The backend of new workspaces when a request names none. */
  readonly defaultBackend: Backend
  /** The services of `backend`, built the first time they are asked for. */
  readonly services: (backend: Backend) => Effect.Effect<Context.Context<BackendServices>, Unsupported>
}

export class WorkspaceBackends extends Context.Tag("microagent/WorkspaceBackends")<
  WorkspaceBackends,
  WorkspaceBackendsShape
>() {
  static readonly make = (options: { readonly defaultBackend?: Backend | undefined } = {}) =>
    Effect.gen(function*() {
      const scope = yield* Effect.scope
      const dependencies = yield* Effect.context<Home | SqlClient.SqlClient>()
      const built = new Map<Backend, Context.Context<BackendServices>>()
      // One build at a time, so two first requests for a backend do not both build it.
      const lock = yield* Effect.makeSemaphore(1)
      const services = (backend: Backend) =>
        lock.withPermits(1)(Effect.suspend(() => {
          const existing = built.get(backend)
          if (existing !== undefined) return Effect.succeed(existing)
          return Scope.fork(scope, ExecutionStrategy.sequential).pipe(
            Effect.flatMap((child) =>
              Layer.buildWithScope(backendLayer(backend), child).pipe(
                Effect.provide(dependencies),
                Effect.tapError(() => Scope.close(child, Exit.void)),
                Effect.tap((context) => Effect.sync(() => built.set(backend, context)))
              )
            )
          )
        }))
      return WorkspaceBackends.of({ defaultBackend: options.defaultBackend ?? defaultBackend(), services })
    })

  static readonly layer = (options: { readonly defaultBackend?: Backend | undefined } = {}) =>
    Layer.scoped(WorkspaceBackends, WorkspaceBackends.make(options))
}

/** Runs `effect` against `backend` (the default backend when undefined). */
export const withBackend = <A, E, R>(backend: Backend | undefined, effect: Effect.Effect<A, E, R>) =>
  Effect.flatMap(WorkspaceBackends, (backends) =>
    Effect.flatMap(
      backends.services(backend ?? backends.defaultBackend),
      (context) => Effect.provide(effect, context)
    ))

/** Runs `effect` against the backend workspace `name` was created on; an unknown name is `NotFound`. */
export const withWorkspaceBackend = <A, E, R>(name: string, effect: Effect.Effect<A, E, R>) =>
  Effect.flatMap(
    StateStore,
    (store) => Effect.flatMap(store.get(name), (workspace) => withBackend(workspace.backend, effect))
  )

/** Like `withWorkspaceBackend`, for a stream. */
export const streamWithWorkspaceBackend = <A, E, R>(name: string, stream: Stream.Stream<A, E, R>) =>
  Stream.unwrap(
    Effect.flatMap(
      StateStore,
      (store) =>
        Effect.flatMap(
          store.get(name),
          (workspace) =>
            Effect.flatMap(WorkspaceBackends, (backends) =>
              Effect.map(
                backends.services(workspace.backend),
                (context) => Stream.provideSomeContext(stream, context)
              ))
        )
    )
  )

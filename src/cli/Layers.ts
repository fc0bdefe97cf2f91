/**
 * Layers provided per command (so `--help` opens no database): the state store of the chosen state
 * directory, and the backend of the workspace at hand.
 */
import { Effect, Layer } from "effect"
import type { Backend } from "../domain/Workspace.ts"
import { backendLayer, type BackendServices, defaultBackend } from "../layers/backends/Backends.ts"
import { DatabaseLive } from "../layers/state/Database.ts"
import { SqliteStateStore } from "../layers/state/SqliteStateStore.ts"
import { Home } from "../services/Home.ts"
import { StateStore } from "../services/StateStore.ts"
import { Invocation } from "./Invocation.ts"

const storeFor = (stateDir: string | undefined) => {
  const home = Home.layer(Home.resolveRoot(stateDir))
  const database = DatabaseLive.pipe(Layer.provideMerge(home))
  return SqliteStateStore.pipe(Layer.provideMerge(database))
}

/** Runs an effect with the state store (and Home, SqlClient) of this invocation. */
export const withStore = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.flatMap(Invocation, (invocation) => Effect.provide(effect, storeFor(invocation.stateDir)))

/** Runs an effect against a named backend. */
export const withBackend = <A, E, R>(backend: Backend, effect: Effect.Effect<A, E, R>) =>
  withStore(Effect.provide(effect, backendLayer(backend)))

/** Runs an effect against a backend chosen for a new workspace: `--backend`, then the spec, then the default. */
export const withNewBackend = <A, E, R>(effect: Effect.Effect<A, E, R>, fromSpec?: Backend) =>
  withStore(Effect.flatMap(Invocation, (invocation) =>
    Effect.provide(
      effect,
      backendLayer(invocation.backend ?? fromSpec ?? defaultBackend())
    )))

/** Runs an effect against the backend a workspace was created on; an unknown name is `NotFound`. */
export const withWorkspaceBackend = <A, E, R>(
  name: string,
  effect: Effect.Effect<A, E, R | BackendServices>
) =>
  withStore(Effect.gen(function*() {
    const store = yield* StateStore
    const workspace = yield* store.get(name)
    return yield* Effect.provide(effect, backendLayer(workspace.backend))
  }))

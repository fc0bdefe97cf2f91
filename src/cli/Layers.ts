/**
 * Layers provided per command (so `--help` opens no database): the state store of the chosen state
 * directory, and the backend of the workspace at hand.
 */
import * as Socket from "@effect/platform/Socket"
import { Cause, Effect, Layer, Option } from "effect"
import { type Permanent, Transient } from "../domain/Errors.ts"
import type { Backend } from "../domain/Workspace.ts"
import type { BackendServices } from "../layers/backends/Backends.ts"
import {
  withBackend as onBackend,
  withWorkspaceBackend as onWorkspaceBackend
} from "../layers/backends/WorkspaceBackends.ts"
import * as Microagent from "../Microagent.ts"
import { isRpcClientError, MicroagentClient } from "../rpc/Client.ts"
import { ensureRuntime } from "../rpc/Launcher.ts"
import { Home } from "../services/Home.ts"
import { Invocation } from "./Invocation.ts"

/** Runs an effect with the state store (and Home, SqlClient, Volumes) of this invocation. */
export const withStore = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.flatMap(
    Invocation,
    (invocation) => Effect.provide(effect, Microagent.layerStore({ home: invocation.stateDir }))
  )

/**
 * The library's `WorkspaceBackends` for one invocation: its default backend is `--backend` or the
 * environment's, over the invocation's store. The CLI's helpers below are the library's
 * (`src/layers/backends/WorkspaceBackends.ts`) with that provided.
 */
const withInvocationBackends = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.flatMap(Invocation, (invocation) =>
    Effect.provide(
      effect,
      Microagent.layerBackends({ home: invocation.stateDir, backend: invocation.backend })
    ))

/** Runs an effect against a named backend. */
export const withBackend = <A, E, R>(backend: Backend, effect: Effect.Effect<A, E, R>) =>
  withInvocationBackends(onBackend(backend, effect))

/** Runs an effect against a backend chosen for a new workspace: `--backend`, then the spec, then the default. */
export const withNewBackend = <A, E, R>(effect: Effect.Effect<A, E, R>, fromSpec?: Backend) =>
  withInvocationBackends(
    Effect.flatMap(
      Invocation,
      (invocation) => onBackend(invocation.backend ?? fromSpec ?? Microagent.defaultBackend(), effect)
    )
  )

/** Runs an effect against the backend a workspace was created on; an unknown name is `NotFound`. */
export const withWorkspaceBackend = <A, E, R>(
  name: string,
  effect: Effect.Effect<A, E, R | BackendServices>
) => withInvocationBackends(onWorkspaceBackend(name, effect))

/** Runs an effect against a cluster: the `MicroagentClient` is the cluster's (`--cluster URL`). */
const withCluster = <A, E, R>(url: string, effect: Effect.Effect<A, E, R | MicroagentClient>) =>
  Effect.scoped(Effect.gen(function*() {
    // Loaded on demand: the cluster's modules (PostgreSQL's client among them) cost every other
    // command its start-up time.
    const ClusterClient = yield* Effect.promise(() => import("../cluster/Client.ts"))
    const context = yield* Layer.build(ClusterClient.layer({ url }))
    return yield* Effect.provide(effect, context)
  }))

/** `onCluster` through the cluster's client when the invocation names a cluster, else `onHost`. */
export const clusterOr = <A, E, R, A2, E2, R2>(
  onCluster: Effect.Effect<A, E, R | MicroagentClient>,
  onHost: Effect.Effect<A2, E2, R2>
) =>
  Effect.flatMap(Invocation, (invocation) => {
    const chosen: Effect.Effect<
      A | A2,
      E | E2 | Transient | Permanent,
      Exclude<R, MicroagentClient> | R2 | Invocation
    > = invocation.cluster !== undefined ? withRuntime(onCluster) : onHost
    return chosen
  })

/** The transport's own failures (socket gone, runtime killed): worth a retry. */
const isTransportFailure = (error: unknown) => isRpcClientError(error) || Socket.isSocketError(error)

const lostRuntime = (error: unknown) =>
  new Transient({
    message: `lost the connection to the runtime: ${String((error as { message?: unknown }).message)}`,
    remediation: "retry; a new runtime starts and picks the VMs up (`microagent gc` repairs leftovers)",
    retryAfterMs: 1000
  })

/** The runtime stopped (SIGTERM, state directory removed) while it served the call. */
export const runtimeStopped = () =>
  new Transient({
    message: "the runtime stopped before it finished this request",
    remediation: "retry; a new runtime starts and picks the VMs up (`microagent gc` repairs leftovers)",
    retryAfterMs: 1000
  })

/**
 * Runs an effect against the state directory's runtime (started on demand): the commands that boot,
 * drive or stop VMs go through it, because it holds the VMs' guest connections.
 */
export const withRuntime = <A, E, R>(effect: Effect.Effect<A, E, R | MicroagentClient>) =>
  Effect.flatMap(Invocation, (invocation) =>
    invocation.cluster !== undefined
      ? withCluster(invocation.cluster, effect)
      : Effect.scoped(Effect.gen(function*() {
        const home = yield* Home.make(Home.resolveRoot(invocation.stateDir))
        yield* ensureRuntime(home)
        const context = yield* Layer.build(MicroagentClient.layer({ socket: home.runtimeSocket }))
        return yield* Effect.provide(effect, context)
      })).pipe(
        Effect.mapError((error) => (isTransportFailure(error) ? lostRuntime(error) : error)),
        // The RPC client reports a socket that died under it as a defect.
        Effect.catchSomeDefect((defect) =>
          isTransportFailure(defect) ? Option.some(Effect.fail(lostRuntime(defect))) : Option.none()
        ),
        // The runtime ended the call (it was stopped while serving it); our own Ctrl-C is not caught
        // here, an interrupted fiber runs no recovery.
        Effect.catchAllCause((cause) =>
          Cause.isInterruptedOnly(cause) ? Effect.fail(runtimeStopped()) : Effect.failCause(cause)
        )
      ))

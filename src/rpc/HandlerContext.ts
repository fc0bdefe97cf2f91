/**
 * What the RPC handler groups share: the services the runtime's handlers run against, and the
 * functions that provide them to one call's effect or stream.
 */
import type { Rpc, RpcGroup } from "@effect/rpc"
import type { Effect, Stream } from "effect"
import type { WorkspaceBackends } from "../layers/backends/WorkspaceBackends.ts"
import type { HostServices } from "../layers/host/HostServices.ts"
import type { Home } from "../services/Home.ts"
import type { StateStore } from "../services/StateStore.ts"
import type { Volumes } from "../services/Volumes.ts"
import type { Rpcs } from "./Rpcs.ts"

/** The services of this process that every handler may use. */
export type HandlerServices = WorkspaceBackends | StateStore | Home | Volumes | HostServices

/** Runs one call's effect with this process's services. */
export type Local = <A, E>(effect: Effect.Effect<A, E, HandlerServices>) => Effect.Effect<A, E>

/** Runs one call's stream with this process's services. */
export type LocalStream = <A, E>(stream: Stream.Stream<A, E, HandlerServices>) => Stream.Stream<A, E>

type Procedures = RpcGroup.Rpcs<typeof Rpcs>

/** The handlers of the procedures named `K`, their services all provided. */
export type HandlersFor<K extends Procedures["_tag"]> = {
  readonly [Current in Procedures as Current["_tag"] extends K ? Current["_tag"] : never]: Rpc.ToHandlerFn<
    Current,
    never
  >
}

/**
 * The client of the RPC API, for host applications: a `MicroagentClient` whose methods are the
 * procedures of `Rpcs` (`client.create({...})`, `client.execStream({...})`, …), connected over a unix
 * socket: a state directory's runtime (started on demand), or any socket a server listens on.
 *
 * The connection lives as long as the layer's scope: build the layer once around everything that
 * uses it (a `Layer`, `Effect.scoped` over the whole program), not around each call.
 */
import * as NodeSocket from "@effect/platform-node-shared/NodeSocket"
import { RpcClient, RpcClientError, type RpcGroup, RpcSerialization } from "@effect/rpc"
import { Context, Effect, Layer, Predicate, Stream } from "effect"
import { Home } from "../services/Home.ts"
import { ensureRuntime } from "./Launcher.ts"
import { Rpcs } from "./Rpcs.ts"

export type MicroagentRpcs = RpcGroup.Rpcs<typeof Rpcs>

export type MicroagentClientShape = RpcClient.RpcClient<MicroagentRpcs, RpcClientError.RpcClientError>

/**
 * A failure of the connection rather than of the call (the socket went away, a frame did not decode):
 * `RpcClientError`, recognised by its type id, which holds across copies of @effect/rpc in one process.
 */
export const isRpcClientError = (error: unknown): error is RpcClientError.RpcClientError =>
  Predicate.hasProperty(error, RpcClientError.TypeId)

/** The same client, running `onLost` whenever a call fails because the connection did. */
const onConnectionLost = (
  client: MicroagentClientShape,
  onLost: Effect.Effect<void>
): MicroagentClientShape => {
  const tap = (error: unknown) => (isRpcClientError(error) ? onLost : Effect.void)
  const wrapped: Record<string, unknown> = {}
  for (
    const [tag, call] of Object.entries(client as unknown as Record<string, (...args: Array<any>) => any>)
  ) {
    wrapped[tag] = (...args: Array<any>) => {
      const result = call(...args)
      return Effect.isEffect(result) ? Effect.tapError(result, tap) : Stream.tapError(result, tap)
    }
  }
  return wrapped as unknown as MicroagentClientShape
}

export class MicroagentClient extends Context.Tag("microagent/MicroagentClient")<
  MicroagentClient,
  MicroagentClientShape
>() {
  /** Connects to the server listening on `socket`. */
  static readonly layer = (options: { readonly socket: string }) =>
    Layer.scoped(MicroagentClient, RpcClient.make(Rpcs)).pipe(
      Layer.provide(RpcClient.layerProtocolSocket()),
      Layer.provide(NodeSocket.layerNet({ path: options.socket })),
      Layer.provide(RpcSerialization.layerNdjson)
    )

  /**
   * Connects to the runtime of the state directory `root`, starting it if none runs, and starting it
   * again if it goes away (the call that found it gone fails with `RpcClientError`; the next one works).
   */
  static readonly layerRuntime = (root: string) =>
    Layer.scoped(
      MicroagentClient,
      Effect.gen(function*() {
        const home = yield* Home.make(root)
        const revive = ensureRuntime(home).pipe(Effect.ignore)
        yield* ensureRuntime(home)
        const client = yield* Layer.build(MicroagentClient.layer({ socket: home.runtimeSocket }))
        return onConnectionLost(Context.get(client, MicroagentClient), revive)
      })
    )
}

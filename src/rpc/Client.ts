/**
 * The client of the RPC API, for host applications: a `MicroagentClient` whose methods are the
 * procedures of `Rpcs` (`client.create({...})`, `client.execStream({...})`, …), connected over the
 * server's unix socket.
 *
 * The connection lives as long as the layer's scope: build the layer once around everything that
 * uses it (a `Layer`, `Effect.scoped` over the whole program), not around each call.
 */
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import { RpcClient, type RpcClientError, type RpcGroup, RpcSerialization } from "@effect/rpc"
import { Context, Layer } from "effect"
import * as NodePath from "node:path"
import { Home } from "../services/Home.ts"
import { Rpcs } from "./Rpcs.ts"

export type MicroagentRpcs = RpcGroup.Rpcs<typeof Rpcs>

export class MicroagentClient extends Context.Tag("microagent/MicroagentClient")<
  MicroagentClient,
  RpcClient.RpcClient<MicroagentRpcs, RpcClientError.RpcClientError>
>() {
  /** Connects to the server listening on `socket`. */
  static readonly layer = (options: { readonly socket: string }) =>
    Layer.scoped(MicroagentClient, RpcClient.make(Rpcs)).pipe(
      Layer.provide(RpcClient.layerProtocolSocket()),
      Layer.provide(NodeSocket.layerNet({ path: options.socket })),
      Layer.provide(RpcSerialization.layerNdjson)
    )
}

/** Where `serve rpc` listens by default: `run/runtime.sock` in the state directory. */
export const defaultSocketPath = (stateDir?: string): string =>
  NodePath.join(Home.resolveRoot(stateDir), "run", "runtime.sock")

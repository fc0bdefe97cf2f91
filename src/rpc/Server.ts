/**
 * The RPC server: handlers that are thin calls into the lifecycle programs, each run against the
 * backend of its workspace, served on a private unix socket (0600, in a 0700 directory).
 *
 * The handlers come in groups: LifecycleHandlers, SnapshotHandlers, ObserveHandlers, StorageHandlers,
 * HostHandlers (images, kernels, models…) and ConnectSessions; this module puts them together and serves them.
 */
import * as NodeSocketServer from "@effect/platform-node-shared/NodeSocketServer"
import * as SocketServer from "@effect/platform/SocketServer"
import { type Rpc, RpcClient, RpcSerialization, RpcServer } from "@effect/rpc"
import { Effect, Layer, Stream } from "effect"
import * as NodeFs from "node:fs"
import * as Net from "node:net"
import * as NodePath from "node:path"
import { Conflict, InvalidInput, Permanent, Transient } from "../domain/Errors.ts"
import { version } from "../domain/Version.ts"
import type { Backend } from "../domain/Workspace.ts"
import { isRpcClientError, MicroagentClient, type MicroagentRpcs } from "./Client.ts"
import { makeConnectHandlers } from "./ConnectSessions.ts"
import type { HandlerServices } from "./HandlerContext.ts"
import { makeHostHandlers } from "./HostHandlers.ts"
import { makeLifecycleHandlers } from "./LifecycleHandlers.ts"
import { makeObserveHandlers } from "./ObserveHandlers.ts"
import { Rpcs } from "./Rpcs.ts"
import { makeSnapshotHandlers } from "./SnapshotHandlers.ts"
import { makeStorageHandlers } from "./StorageHandlers.ts"

/** The handlers of every procedure; they need the state store and the backends of this process. */
export const RpcHandlers = Rpcs.toLayer(Effect.gen(function*() {
  const context = yield* Effect.context<HandlerServices>()
  const host = yield* makeHostHandlers
  const local = <A, E>(effect: Effect.Effect<A, E, HandlerServices>) => Effect.provide(effect, context)
  const localStream = <A, E>(stream: Stream.Stream<A, E, HandlerServices>) =>
    Stream.provideContext(stream, context)

  return Rpcs.of({
    version: () => Effect.succeed({ version }),
    ...host,
    ...makeLifecycleHandlers(local, localStream),
    ...makeSnapshotHandlers(local),
    ...makeObserveHandlers(local, localStream),
    ...makeStorageHandlers(local),
    ...makeConnectHandlers(localStream)
  })
}))

/** Whether something answers on a unix socket path. */
const answers = (path: string) =>
  Effect.async<boolean>((resume) => {
    const socket = Net.connect({ path })
    socket.once("connect", () => {
      socket.destroy()
      resume(Effect.succeed(true))
    })
    socket.once("error", () => resume(Effect.succeed(false)))
  })

/** A filesystem step of setting up the socket; failing it is `Permanent`, naming what failed. */
const fsStep = <A>(what: string, step: () => A) =>
  Effect.try({
    try: step,
    catch: (cause) =>
      new Permanent({
        message: `cannot ${what}: ${cause instanceof Error ? cause.message : String(cause)}`,
        remediation: "check the directory's owner and permissions, or pick another --socket"
      })
  })

/**
 * A socket server on `path`: a missing directory is made 0700, a stale socket left by a dead server is
 * replaced, a live one is a `Conflict`, and the socket is 0600 and removed when the scope closes.
 */
export const unixSocketServer = (path: string) =>
  Layer.scoped(
    SocketServer.SocketServer,
    Effect.gen(function*() {
      const directory = NodePath.dirname(path)
      // A directory made here is private (0700 whatever the umask); an existing one is the caller's
      // and keeps its mode: `--socket /tmp/x.sock` made /tmp itself 0700, locking every other user out.
      yield* fsStep(`create ${directory}`, () => {
        if (NodeFs.existsSync(directory)) return
        NodeFs.mkdirSync(directory, { recursive: true, mode: 0o700 })
        NodeFs.chmodSync(directory, 0o700)
      })
      const existing = yield* fsStep(
        `examine ${path}`,
        () => NodeFs.lstatSync(path, { throwIfNoEntry: false })
      )
      if (existing !== undefined) {
        if (!existing.isSocket()) {
          return yield* new InvalidInput({
            message: `${path} exists and is not a socket`,
            remediation: "pick another --socket, or remove the file"
          })
        }
        if (yield* answers(path)) {
          return yield* new Conflict({
            message: `a server is already listening on ${path}`,
            remediation: "stop it first, or pick another --socket"
          })
        }
        yield* fsStep(`remove the stale socket ${path}`, () => NodeFs.rmSync(path, { force: true }))
      }
      const server = yield* NodeSocketServer.make({ path }).pipe(
        Effect.mapError((error) =>
          new Permanent({
            message: `cannot listen on ${path}: ${String(error.cause)}`,
            remediation: "check the directory's permissions, or pick another --socket (at most 107 bytes)"
          })
        )
      )
      yield* Effect.addFinalizer(() => Effect.sync(() => NodeFs.rmSync(path, { force: true })))
      // The directory is private already; the socket's own mode makes that hold wherever it lives.
      yield* fsStep(`restrict ${path} to its owner`, () => NodeFs.chmodSync(path, 0o600))
      return server
    })
  )

/** Serves the API on `socket` until the scope closes. */
export const layerServer = (options: { readonly socket: string }) =>
  RpcServer.layer(Rpcs, { disableFatalDefects: true }).pipe(
    Layer.provide(RpcHandlers),
    Layer.provide(RpcServer.layerProtocolSocketServer),
    Layer.provide(unixSocketServer(options.socket)),
    Layer.provide(RpcSerialization.layerNdjson)
  )

/** A lost connection to the server a call was forwarded to: worth a retry. */
const lostUpstream = <E>(error: E) =>
  isRpcClientError(error)
    ? new Transient({
      message: `lost the connection to the runtime: ${error.message}`,
      remediation: "retry; the runtime is started again on demand",
      retryAfterMs: 1000
    })
    : error

/**
 * Handlers that forward every procedure to a `MicroagentClient` (the state directory's runtime): a
 * socket of one's own in front of it. New workspaces get `defaultBackend` when the call names none.
 * Interrupting a forwarded call interrupts it upstream.
 */
export const forwardingHandlers = (
  options: { readonly defaultBackend: Backend }
): Layer.Layer<Rpc.ToHandler<MicroagentRpcs>, never, MicroagentClient> =>
  Rpcs.toLayer(Effect.map(MicroagentClient, (client) => {
    const calls = client as unknown as Record<string, (payload: unknown) => unknown>
    const handlers: Record<string, (payload: unknown) => unknown> = {}
    for (const tag of Rpcs.requests.keys()) {
      handlers[tag] = (payload) => {
        const withBackend = tag === "create" || tag === "run"
          ? { backend: options.defaultBackend, ...(payload as object) }
          : payload
        const result = calls[tag]!(withBackend)
        return Effect.isEffect(result)
          ? Effect.mapError(result, lostUpstream)
          : Stream.mapError(result as Stream.Stream<unknown, unknown>, lostUpstream)
      }
    }
    return handlers as unknown as Parameters<typeof Rpcs.of>[0]
  })) as Layer.Layer<Rpc.ToHandler<MicroagentRpcs>, never, MicroagentClient>

/** Serves the API on `socket`, forwarding every call to a `MicroagentClient`, until the scope closes. */
export const layerForwardingServer = (
  options: { readonly socket: string; readonly defaultBackend: Backend }
) =>
  RpcServer.layer(Rpcs, { disableFatalDefects: true }).pipe(
    Layer.provide(forwardingHandlers(options)),
    Layer.provide(RpcServer.layerProtocolSocketServer),
    Layer.provide(unixSocketServer(options.socket)),
    Layer.provide(RpcSerialization.layerNdjson)
  )

/**
 * A client that calls the handlers in this process, without a socket or serialization: what the MCP
 * server uses until it talks to a runtime process. A defect fails only the call that raised it.
 */
export const makeInProcessClient = Effect.gen(function*() {
  let client!: Effect.Effect.Success<ReturnType<typeof RpcClient.makeNoSerialization<MicroagentRpcs, never>>>
  const server = yield* RpcServer.makeNoSerialization(Rpcs, {
    disableFatalDefects: true,
    onFromServer: (response) => client.write(response)
  })
  client = yield* RpcClient.makeNoSerialization(Rpcs, {
    supportsAck: true,
    onFromClient: ({ message }) => server.write(0, message)
  })
  return client.client
})

export const layerInProcessClient = Layer.scoped(MicroagentClient, makeInProcessClient).pipe(
  Layer.provide(RpcHandlers)
)

/**
 * One guest connection per VM, shared by every caller of a long-lived process. A VM's agent channel
 * is a single stream (QEMU's virtio-serial chardev serves one client at a time), multiplexed by the
 * protocol, so the process that holds the VMs holds their connections and lends them out; a second
 * handshake per exec would also cost a round trip. A connection that fails at the transport level is
 * dropped, and the next caller opens a fresh one.
 */
import { Effect, ExecutionStrategy, Exit, Layer, Scope, Stream } from "effect"
import { GuestChannel, type GuestConnection, type GuestError } from "../../services/GuestChannel.ts"
import type { ChannelEndpoint } from "../../services/Hypervisor.ts"

const transportFailure = (error: GuestError) =>
  error._tag === "GuestUnreachable" || error._tag === "GuestProtocolError"

export const make = Effect.gen(function*() {
  const inner = yield* GuestChannel
  const scope = yield* Effect.scope
  const open = new Map<
    string,
    { readonly raw: GuestConnection; readonly shared: GuestConnection; readonly scope: Scope.CloseableScope }
  >()
  const lock = yield* Effect.makeSemaphore(1)

  const drop = (key: string, connection: GuestConnection) =>
    Effect.suspend(() => {
      const entry = open.get(key)
      if (entry === undefined || entry.raw !== connection) return Effect.void
      open.delete(key)
      return Scope.close(entry.scope, Exit.void)
    })

  /** The connection's operations, each dropping the connection when the transport fails. */
  const guarded = (key: string, connection: GuestConnection): GuestConnection => {
    const onFailure = <A, R>(effect: Effect.Effect<A, GuestError, R>) =>
      effect.pipe(Effect.tapError((error) => (transportFailure(error) ? drop(key, connection) : Effect.void)))
    const freshen = connection.freshen
    return {
      ...(connection.agent === undefined ? {} : { agent: connection.agent }),
      exec: (request, stdin) => onFailure(connection.exec(request, stdin)),
      execStream: (request, stdin, controls) =>
        connection.execStream(request, stdin, controls).pipe(
          Stream.tapError((error) => (transportFailure(error) ? drop(key, connection) : Effect.void))
        ),
      putFile: (file) => onFailure(connection.putFile(file)),
      getFile: (path) => onFailure(connection.getFile(path)),
      deliverSecrets: (secrets, options) => onFailure(connection.deliverSecrets(secrets, options)),
      ...(freshen === undefined ? {} : {
        freshen: (request) =>
          freshen(request).pipe(
            Effect.tapError((error) =>
              error._tag !== "GuestUnsupported" && transportFailure(error)
                ? drop(key, connection)
                : Effect.void
            )
          )
      }),
      ping: onFailure(connection.ping),
      shutdown: onFailure(connection.shutdown).pipe(
        // After a shutdown the VM is going away; the next boot gets a new connection.
        Effect.ensuring(drop(key, connection))
      )
    }
  }

  const connect = (endpoint: ChannelEndpoint, options?: Parameters<typeof inner.connect>[1]) =>
    lock.withPermits(1)(Effect.gen(function*() {
      const key = JSON.stringify(endpoint)
      const existing = open.get(key)
      if (existing !== undefined) return existing.shared
      const child = yield* Scope.fork(scope, ExecutionStrategy.sequential)
      const connection = yield* inner.connect(endpoint, options).pipe(
        Scope.extend(child),
        Effect.tapErrorCause(() => Scope.close(child, Exit.void))
      )
      const shared = guarded(key, connection)
      open.set(key, { raw: connection, shared, scope: child })
      // A VM torn down without a shutdown (a `run`'s teardown, a kill, a crash) closes the socket:
      // let go of its connection then, or every such VM would leave one behind (its 1 MiB read buffer
      // and socket) for as long as the runtime lives.
      if (connection.closed !== undefined) {
        yield* Effect.forkIn(Effect.zipRight(connection.closed, drop(key, connection)), scope)
      }
      return shared
    }))

  return GuestChannel.of({ connect })
})

/** Shares the connections of the GuestChannel it is given (e.g. `AgentChannel.layer`). */
export const layer = Layer.scoped(GuestChannel, make)

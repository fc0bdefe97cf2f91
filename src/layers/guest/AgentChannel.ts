/**
 * The real `GuestChannel`: speaks docs/protocol.md to the guest agent over a unix stream socket
 * (QEMU's virtio-serial chardev, or the agent's own `--listen-unix` test mode).
 *
 * One socket per connection; every exec, transfer and ping is a stream on it. Incoming data is
 * bounded by the credit this side grants (`HOST_WINDOW` per stream, topped up as the consumer
 * pulls), outgoing data by the agent's credit, so neither side buffers without bound.
 *
 * internal/connection.ts demultiplexes the connection and keeps the credit; internal/exec.ts,
 * internal/files.ts and internal/control.ts are the operations on it.
 */
import { Duration, Effect, Layer, Schedule } from "effect"
import {
  type ConnectOptions,
  GuestChannel,
  type GuestConnection,
  GuestUnreachable
} from "../../services/GuestChannel.ts"
import type { ChannelEndpoint } from "../../services/Hypervisor.ts"
import { attempt, type Connection } from "./internal/connection.ts"
import { controlOperations } from "./internal/control.ts"
import { execOperations } from "./internal/exec.ts"
import { fileOperations } from "./internal/files.ts"

const DEFAULT_CONNECT_TIMEOUT = Duration.seconds(60)

const makeConnection = (conn: Connection): GuestConnection => ({
  ...execOperations(conn),
  ...fileOperations(conn),
  ...controlOperations(conn),
  closed: conn.closed,
  agent: conn.info!
})

const connect = Effect.fn("GuestChannel.connect")(
  function*(endpoint: ChannelEndpoint, options?: ConnectOptions) {
    if (endpoint._tag !== "UnixSocket") {
      return yield* new GuestUnreachable({
        message: `the agent channel cannot reach a ${endpoint._tag} endpoint`
      })
    }
    const timeout = options?.timeout ?? DEFAULT_CONNECT_TIMEOUT
    const conn = yield* Effect.uninterruptibleMask((restore) =>
      Effect.gen(function*() {
        const conn = yield* restore(
          attempt(endpoint.path).pipe(
            // The VM may still be booting: the socket may not exist yet, or nobody answers yet.
            Effect.retry({
              while: (e) => e._tag === "GuestUnreachable",
              schedule: Schedule.spaced("50 millis")
            }),
            Effect.timeoutFail({
              duration: timeout,
              onTimeout: () =>
                new GuestUnreachable({
                  message: `the guest agent at ${endpoint.path} did not answer within ${
                    Duration.format(timeout)
                  }`
                })
            })
          )
        )
        yield* Effect.addFinalizer(() => Effect.sync(() => conn.close()))
        return conn
      })
    )
    return makeConnection(conn)
  }
)

export const AgentChannel = {
  layer: Layer.succeed(GuestChannel, GuestChannel.of({ connect }))
} as const

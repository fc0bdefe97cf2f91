/** The small requests on a guest connection: SECRETS, FRESHEN, PING and SHUTDOWN. */
import { Effect, Either, Option, ParseResult, Schema } from "effect"
import {
  type FreshenRequest,
  type FreshenResult,
  type FreshenStep,
  GuestProtocolError,
  GuestRemoteError,
  GuestUnsupported
} from "../../../services/GuestChannel.ts"
import { awaitOk, type Connection, errorFromWire, scopedStream, takeOrFail } from "./connection.ts"
import { Freshen, type Message, SecretName } from "./messages.ts"
import { MAX_PAYLOAD } from "./wire.ts"

/** Secrets, freshening, ping and shutdown of a connection. */
export const controlOperations = (conn: Connection) => {
  const deliverSecrets = Effect.fn("GuestChannel.deliverSecrets")(function*(
    secrets: ReadonlyArray<{ name: string; value: Uint8Array }>,
    options?: { readonly purge?: boolean | undefined }
  ) {
    const invalid = secrets.find((s) => !Schema.is(SecretName)(s.name))
    if (invalid) {
      return yield* new GuestRemoteError({
        code: "invalid_argument",
        message: `secret name ${JSON.stringify(invalid.name)} must match [A-Za-z_][A-Za-z0-9_]*`
      })
    }
    const size = secrets.reduce((n, s) => n + 12 + s.name.length + s.value.length, 0)
    if (size > MAX_PAYLOAD) {
      return yield* new GuestRemoteError({
        code: "invalid_argument",
        message: "secrets exceed 1 MiB in total"
      })
    }
    const st = yield* scopedStream(conn)
    yield* conn.sendRequest(st, {
      _tag: "Secrets",
      secrets,
      ...(options?.purge === true ? { purge: true } : {})
    })
    yield* awaitOk(st)
    if (options?.purge === true) {
      // The guest kernel keeps what arrived on the port in its receive buffers (a ring of pages, reused,
      // never cleared): 16 MiB of zeros through them overwrites every one that held a SECRETS frame
      // (2 MiB did not, here; the test reads every snapshot file for the value).
      const zeros = new Uint8Array(256 * 1024)
      for (let i = 0; i < 64; i++) yield* pingWith(zeros)
    }
  }, Effect.scoped)

  const freshen = Effect.fn("GuestChannel.freshen")(function*(request: FreshenRequest) {
    const unsupported = () =>
      new GuestUnsupported({
        operation: "freshen",
        message: `the guest agent (${conn.info?.software ?? "unknown"}) does not know FRESHEN`
      })
    // An agent announces what it knows; one from before FRESHEN is not asked at all.
    if (conn.info !== undefined && !conn.info.capabilities.includes("freshen")) return yield* unsupported()
    const message: Message = {
      _tag: "Freshen",
      ...(request.time === undefined
        ? {}
        : { timeSec: request.time.seconds, timeNsec: request.time.nanoseconds }),
      ...(request.entropy === undefined ? {} : { entropy: request.entropy }),
      ...(request.hostname === undefined ? {} : { hostname: request.hostname }),
      ...(request.newMachineId === true ? { machineId: true } : {}),
      ...(request.network === undefined
        ? {}
        : {
          address: request.network.address,
          gateway: request.network.gateway,
          mac: request.network.mac,
          ...(request.network.routes === undefined || request.network.routes.length === 0
            ? {}
            : { routes: request.network.routes.join(",") }),
          ...(request.network.dns === undefined || request.network.dns.length === 0
            ? {}
            : { dns: request.network.dns.join(",") })
        }),
      ...(request.disks === undefined ? {} : { disks: request.disks }),
      ...(request.nets === undefined ? {} : { nets: request.nets }),
      ...(request.forwarders?.modelPort === undefined ? {} : { modelPort: request.forwarders.modelPort }),
      ...(request.forwarders?.brokerPorts === undefined || request.forwarders.brokerPorts.length === 0
        ? {}
        : { brokers: request.forwarders.brokerPorts.join(",") })
    }
    const invalid = Either.getLeft(Schema.validateEither(Freshen)(message))
    if (Option.isSome(invalid)) {
      return yield* new GuestRemoteError({
        code: "invalid_argument",
        message: `freshen: ${ParseResult.TreeFormatter.formatErrorSync(invalid.value)}`
      })
    }
    const st = yield* scopedStream(conn)
    yield* conn.sendRequest(st, message)
    for (;;) {
      const m = yield* takeOrFail(st)
      if (m._tag === "Window") continue
      if (m._tag === "Ok") return freshenResult(m)
      // What an agent that does not know the type answers (docs/protocol.md §1).
      if (m._tag === "Error" && m.code === "unknown_type") return yield* unsupported()
      if (m._tag === "Error") return yield* errorFromWire(m)
      return yield* new GuestProtocolError({ message: `unexpected ${m._tag} answering FRESHEN` })
    }
  }, Effect.scoped)

  const pingWith = (data: Uint8Array) =>
    Effect.gen(function*() {
      const st = yield* scopedStream(conn)
      conn.send(st.id, { _tag: "Ping", data })
      const m = yield* takeOrFail(st)
      if (m._tag !== "Pong") {
        return yield* new GuestProtocolError({ message: `unexpected ${m._tag} answering PING` })
      }
    }).pipe(Effect.scoped)
  const ping = pingWith(new Uint8Array(0)).pipe(Effect.withSpan("GuestChannel.ping"))

  const shutdown = Effect.gen(function*() {
    const st = yield* scopedStream(conn)
    conn.send(st.id, { _tag: "Shutdown", action: "poweroff" })
    yield* awaitOk(st)
  }).pipe(Effect.scoped, Effect.withSpan("GuestChannel.shutdown"))
  return { deliverSecrets, freshen, ping, shutdown }
}

/** The OK that answers FRESHEN: one step per outcome field. */
const freshenResult = (m: Extract<Message, { _tag: "Ok" }>): FreshenResult => {
  const steps: { -readonly [K in keyof FreshenResult]?: FreshenStep } = {}
  const add = (
    name: keyof FreshenResult,
    outcome: FreshenStep["outcome"] | undefined,
    errno: number | undefined
  ) => {
    if (outcome !== undefined) steps[name] = errno === undefined ? { outcome } : { outcome, errno }
  }
  add("clock", m.clock, m.clockErrno)
  add("rng", m.rng, m.rngErrno)
  add("hostname", m.hostname, m.hostnameErrno)
  add("machineId", m.machineId, m.machineIdErrno)
  add("network", m.network, m.networkErrno)
  add("disks", m.disks, m.disksErrno)
  add("nets", m.nets, m.netsErrno)
  add("forwarders", m.forwarders, m.forwardersErrno)
  return steps
}

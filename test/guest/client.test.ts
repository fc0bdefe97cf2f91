/**
 * The host-side client against scripted fake agents that misbehave in ways the real one does not.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Either, type Scope } from "effect"
import { rmSync } from "node:fs"
import * as Net from "node:net"
import { join } from "node:path"
import { ExecRequest } from "../../src/domain/Exec.ts"
import { AgentChannel } from "../../src/layers/guest/AgentChannel.ts"
import { decodeMessage, frameBytes, type Message } from "../../src/layers/guest/internal/messages.ts"
import { FrameDecoder, WireError } from "../../src/layers/guest/internal/wire.ts"
import { GuestChannel } from "../../src/services/GuestChannel.ts"
import { makeTempDir } from "./agent.ts"

type Reply = (stream: number, message: Message, socket: Net.Socket) => void

/** A unix-socket server that answers each decoded frame through `reply`. */
const fakeAgent = (reply: Reply) =>
  Effect.acquireRelease(
    Effect.async<{ path: string; server: Net.Server; dir: string }>((resume) => {
      const dir = makeTempDir()
      const path = join(dir, "fake.sock")
      const server = Net.createServer((socket) => {
        const decoder = new FrameDecoder()
        socket.on("data", (chunk: Buffer) => {
          for (const f of decoder.push(chunk)) {
            if (f instanceof WireError) continue
            const m = decodeMessage(f.type, f.payload)
            if (Either.isRight(m)) reply(f.stream, m.right, socket)
          }
        })
        socket.on("error", () => {})
      })
      server.listen(path, () => resume(Effect.succeed({ path, server, dir })))
    }),
    ({ dir, server }) =>
      Effect.sync(() => {
        server.close()
        rmSync(dir, { recursive: true, force: true })
      })
  )

const hello = (version = 1, capabilities: ReadonlyArray<string> = ["exec"]): Message => ({
  _tag: "Hello",
  version,
  software: "fake",
  capabilities,
  maxPayload: 1048576,
  window: 65536
})

const live = <A, E>(name: string, body: () => Effect.Effect<A, E, GuestChannel | Scope.Scope>) =>
  it.scopedLive(name, () => body().pipe(Effect.provide(AgentChannel.layer)))

describe("guest channel client against misbehaving agents", () => {
  live("refuses an agent that speaks another protocol version", () =>
    Effect.gen(function*() {
      const fake = yield* fakeAgent((stream, m, socket) => {
        if (m._tag === "Hello") socket.write(frameBytes(stream, hello(2)))
      })
      const channel = yield* GuestChannel
      const r = yield* Effect.either(
        channel.connect({ _tag: "UnixSocket", path: fake.path }, { timeout: "5 seconds" })
      )
      assert.isTrue(Either.isLeft(r) && r.left._tag === "GuestProtocolError")
    }))

  live("gives up on an agent that never answers the handshake", () =>
    Effect.gen(function*() {
      const fake = yield* fakeAgent(() => {})
      const channel = yield* GuestChannel
      const started = Date.now()
      const r = yield* Effect.either(
        channel.connect({ _tag: "UnixSocket", path: fake.path }, { timeout: "700 millis" })
      )
      assert.isTrue(Either.isLeft(r) && r.left._tag === "GuestUnreachable")
      assert.isBelow(Date.now() - started, 3000)
    }))

  live("fails pending work with a protocol error when the agent sends garbage", () =>
    Effect.gen(function*() {
      const fake = yield* fakeAgent((stream, m, socket) => {
        if (m._tag === "Hello") socket.write(frameBytes(stream, hello()))
        if (m._tag === "Exec") socket.write(Buffer.from("definitely not a frame"))
      })
      const channel = yield* GuestChannel
      const conn = yield* channel.connect({ _tag: "UnixSocket", path: fake.path }, { timeout: "5 seconds" })
      const r = yield* Effect.either(conn.exec(new ExecRequest({ argv: ["true"] })))
      assert.isTrue(Either.isLeft(r) && r.left._tag === "GuestProtocolError")
      // the connection is gone for good
      const after = yield* Effect.either(conn.ping)
      assert.isTrue(Either.isLeft(after))
    }))

  live("fails pending work as unreachable when the agent goes away", () =>
    Effect.gen(function*() {
      const fake = yield* fakeAgent((stream, m, socket) => {
        if (m._tag === "Hello") socket.write(frameBytes(stream, hello()))
        if (m._tag === "Exec") socket.destroy()
      })
      const channel = yield* GuestChannel
      const conn = yield* channel.connect({ _tag: "UnixSocket", path: fake.path }, { timeout: "5 seconds" })
      const r = yield* Effect.either(conn.exec(new ExecRequest({ argv: ["true"] })))
      assert.isTrue(Either.isLeft(r) && r.left._tag === "GuestUnreachable")
    }))

  live("maps agent errors to remote and protocol errors by code", () =>
    Effect.gen(function*() {
      const fake = yield* fakeAgent((stream, m, socket) => {
        if (m._tag === "Hello") socket.write(frameBytes(stream, hello()))
        if (m._tag === "FileGet") {
          socket.write(
            frameBytes(stream, { _tag: "Error", code: "permission_denied", message: "nope", errno: 13 })
          )
        }
        if (m._tag === "Exec") {
          socket.write(frameBytes(stream, { _tag: "Error", code: "bad_message", message: "?" }))
        }
      })
      const channel = yield* GuestChannel
      const conn = yield* channel.connect({ _tag: "UnixSocket", path: fake.path }, { timeout: "5 seconds" })
      const get = yield* Effect.either(conn.getFile("/x"))
      assert.isTrue(
        Either.isLeft(get) && get.left._tag === "GuestRemoteError" && get.left.code === "permission_denied"
      )
      const exec = yield* Effect.either(conn.exec(new ExecRequest({ argv: ["true"] })))
      assert.isTrue(Either.isLeft(exec) && exec.left._tag === "GuestProtocolError")
    }))

  live("tells an agent from before FRESHEN apart, so the caller can fall back", () =>
    Effect.gen(function*() {
      const channel = yield* GuestChannel
      const request = { time: { seconds: 1767225600, nanoseconds: 0 }, entropy: new Uint8Array(64) }
      // An agent restored from an old snapshot: its handshake does not announce FRESHEN, so it is not sent.
      const seen: Array<string> = []
      const old = yield* fakeAgent((stream, m, socket) => {
        seen.push(m._tag)
        if (m._tag === "Hello") socket.write(frameBytes(stream, hello()))
        if (m._tag === "Ping") socket.write(frameBytes(stream, { _tag: "Pong", data: m.data }))
      })
      const oldConn = yield* channel.connect({ _tag: "UnixSocket", path: old.path }, { timeout: "5 seconds" })
      const skipped = yield* Effect.either(oldConn.freshen!(request))
      assert.isTrue(Either.isLeft(skipped) && skipped.left._tag === "GuestUnsupported")
      yield* oldConn.ping
      assert.notInclude(seen, "Freshen")

      // One that announces it but answers as an agent that does not know the type (docs/protocol.md §1).
      const confused = yield* fakeAgent((stream, m, socket) => {
        if (m._tag === "Hello") socket.write(frameBytes(stream, hello(1, ["exec", "freshen"])))
        if (m._tag === "Freshen") {
          socket.write(
            frameBytes(stream, { _tag: "Error", code: "unknown_type", message: "unknown message type" })
          )
        }
        if (m._tag === "Ping") socket.write(frameBytes(stream, { _tag: "Pong", data: m.data }))
      })
      const conn = yield* channel.connect({ _tag: "UnixSocket", path: confused.path }, {
        timeout: "5 seconds"
      })
      const unknown = yield* Effect.either(conn.freshen!(request))
      assert.isTrue(
        Either.isLeft(unknown) && unknown.left._tag === "GuestUnsupported"
          && unknown.left.operation === "freshen"
      )
      // Not a broken connection: it goes on serving.
      yield* conn.ping
    }))
})

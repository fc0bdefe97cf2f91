/**
 * The runtime's shared guest connections: one per VM, and let go of once its transport closes (a VM
 * torn down without a shutdown must not leave its connection, socket and read buffer behind).
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Either, Layer, Stream } from "effect"
import { make } from "../../src/layers/guest/SharedGuestChannel.ts"
import { GuestChannel, type GuestConnection, GuestUnsupported } from "../../src/services/GuestChannel.ts"

/** An inner channel whose connections close when the test says so; counts connects and releases. */
const innerChannel = Effect.sync(() => {
  const closers: Array<Deferred.Deferred<void>> = []
  let released = 0
  const layer = Layer.succeed(
    GuestChannel,
    GuestChannel.of({
      connect: () =>
        Effect.gen(function*() {
          const closed = yield* Deferred.make<void>()
          closers.push(closed)
          yield* Effect.addFinalizer(() => Effect.sync(() => released++))
          const unused = () => Effect.die("not used here")
          const connection: GuestConnection = {
            exec: unused,
            execStream: () => Stream.die("not used here"),
            putFile: unused,
            getFile: unused,
            deliverSecrets: unused,
            ping: Effect.void,
            shutdown: Effect.void,
            closed: Deferred.await(closed)
          }
          return connection
        })
    })
  )
  return { layer, closers, released: () => released }
})

describe("SharedGuestChannel", () => {
  it.scopedLive("shares one connection per endpoint and drops it once its transport closes", () =>
    Effect.gen(function*() {
      const inner = yield* innerChannel
      const shared = yield* make.pipe(Effect.provide(inner.layer))
      const endpoint = { _tag: "UnixSocket", path: "/nowhere/agent.sock" } as const
      const first = yield* shared.connect(endpoint)
      const again = yield* shared.connect(endpoint)
      assert.strictEqual(again, first)
      assert.strictEqual(inner.closers.length, 1)

      // The VMM went away: its socket closed.
      yield* Deferred.succeed(inner.closers[0]!, undefined)
      yield* Effect.yieldNow()
      yield* Effect.sleep("10 millis")
      assert.strictEqual(inner.released(), 1, "the closed connection's scope was closed")

      const next = yield* shared.connect(endpoint)
      assert.notStrictEqual(next, first)
      assert.strictEqual(inner.closers.length, 2, "a fresh connection for the next VM")
    }))

  it.scopedLive("passes FRESHEN through; an agent that does not know it keeps its connection", () =>
    Effect.gen(function*() {
      let connects = 0
      let calls = 0
      const unused = () => Effect.die("not used here")
      const inner = Layer.succeed(
        GuestChannel,
        GuestChannel.of({
          connect: () =>
            Effect.sync((): GuestConnection => {
              connects++
              return {
                exec: unused,
                execStream: () => Stream.die("not used here"),
                putFile: unused,
                getFile: unused,
                deliverSecrets: unused,
                freshen: () =>
                  ++calls === 1
                    ? Effect.fail(new GuestUnsupported({ operation: "freshen", message: "old agent" }))
                    : Effect.succeed({ clock: { outcome: "done" } }),
                ping: Effect.void,
                shutdown: Effect.void
              }
            })
        })
      )
      const shared = yield* make.pipe(Effect.provide(inner))
      const endpoint = { _tag: "UnixSocket", path: "/nowhere/agent.sock" } as const
      const first = yield* shared.connect(endpoint)
      const refused = yield* Effect.either(first.freshen!({}))
      assert.isTrue(Either.isLeft(refused) && refused.left._tag === "GuestUnsupported")
      assert.strictEqual(yield* shared.connect(endpoint), first, "not dropped")
      assert.deepStrictEqual(yield* first.freshen!({}), { clock: { outcome: "done" } })
      assert.strictEqual(connects, 1)
    }))
})

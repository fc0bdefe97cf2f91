/**
 * The idempotency store on its own: the replay window, argument mismatches, what is kept, concurrent
 * calls with one key.
 */
import { SqlClient } from "@effect/sql"
import { assert, describe, it } from "@effect/vitest"
import { Context, Deferred, Effect, Fiber, Layer, Ref, TestClock } from "effect"
import * as Database from "../../src/layers/state/Database.ts"
import { hashOf, Idempotency, maxKeys } from "../../src/mcp/Idempotency.ts"
import { Home } from "../../src/services/Home.ts"
import { makeTempDir } from "../support/fakeEnvironment.ts"

const environment = Layer.unwrapScoped(
  Effect.map(
    makeTempDir("microagent-idem"),
    (root) => Idempotency.layer.pipe(Layer.provideMerge(Database.layer), Layer.provide(Home.layer(root)))
  )
)

/** An operation that counts its runs and answers with the count. */
const counter = Effect.map(Ref.make(0), (runs) => ({
  runs,
  execute: Ref.updateAndGet(runs, (n) => n + 1).pipe(Effect.map((n) => ({ ok: true, result: n })))
}))

const keepAll = () => true

describe("MCP idempotency keys", () => {
  it.scoped("replays within 15 minutes, runs again after", () =>
    Effect.gen(function*() {
      const idempotency = yield* Idempotency
      const { execute, runs } = yield* counter
      const request = { tool: "workspace.create", key: "k", args: { image: "alpine", name: "a" } }
      const first = yield* idempotency.once(request, execute, keepAll)
      assert.deepStrictEqual(first, { envelope: { ok: true, result: 1 }, replayed: false })
      yield* TestClock.adjust("14 minutes")
      // The same arguments in another order are the same request.
      const again = yield* idempotency.once(
        { ...request, args: { name: "a", image: "alpine" } },
        execute,
        keepAll
      )
      assert.deepStrictEqual(again, { envelope: { ok: true, result: 1 }, replayed: true })
      yield* TestClock.adjust("2 minutes")
      const later = yield* idempotency.once(request, execute, keepAll)
      assert.deepStrictEqual(later, { envelope: { ok: true, result: 2 }, replayed: false })
      assert.strictEqual(yield* Ref.get(runs), 2)
    }).pipe(Effect.provide(environment)))

  it.scoped("the same key with other arguments, or for another tool", () =>
    Effect.gen(function*() {
      const idempotency = yield* Idempotency
      const { execute } = yield* counter
      yield* idempotency.once({ tool: "workspace.exec", key: "k", args: { argv: ["a"] } }, execute, keepAll)
      const other = yield* Effect.flip(
        idempotency.once({ tool: "workspace.exec", key: "k", args: { argv: ["b"] } }, execute, keepAll)
      )
      assert.strictEqual(other._tag, "Conflict")
      // Keys are per tool.
      const elsewhere = yield* idempotency.once(
        { tool: "workspace.run", key: "k", args: {} },
        execute,
        keepAll
      )
      assert.isFalse(elsewhere.replayed)
    }).pipe(Effect.provide(environment)))

  it.scoped("keeps only what `keep` accepts", () =>
    Effect.gen(function*() {
      const idempotency = yield* Idempotency
      const { execute } = yield* counter
      const request = { tool: "workspace.start", key: "k", args: { name: "w" } }
      yield* idempotency.once(request, execute, () => false)
      const retried = yield* idempotency.once(request, execute, keepAll)
      assert.deepStrictEqual(retried, { envelope: { ok: true, result: 2 }, replayed: false })
    }).pipe(Effect.provide(environment)))

  it.scoped("a concurrent call with the key waits for the first and gets its result", () =>
    Effect.gen(function*() {
      const idempotency = yield* Idempotency
      const gate = yield* Deferred.make<void>()
      const { execute, runs } = yield* counter
      const slow = Deferred.await(gate).pipe(Effect.zipRight(execute))
      const request = { tool: "workspace.run", key: "k", args: { image: "alpine" } }
      const first = yield* Effect.fork(idempotency.once(request, slow, keepAll))
      yield* Effect.yieldNow()
      const second = yield* Effect.fork(idempotency.once(request, slow, keepAll))
      yield* Effect.yieldNow()
      yield* Deferred.succeed(gate, undefined)
      assert.deepStrictEqual(yield* Fiber.join(first), { envelope: { ok: true, result: 1 }, replayed: false })
      assert.deepStrictEqual(yield* Fiber.join(second), { envelope: { ok: true, result: 1 }, replayed: true })
      assert.strictEqual(yield* Ref.get(runs), 1)
    }).pipe(Effect.provide(environment)))

  it.live("two servers on one state directory: the second waits for the first and replays its result", () =>
    Effect.scoped(Effect.gen(function*() {
      const root = yield* makeTempDir("microagent-idem2")
      // Two instances with their own connections to one store, as two `serve mcp` processes have.
      const server = () =>
        Layer.build(
          Idempotency.layer.pipe(Layer.provideMerge(Database.layer), Layer.provide(Home.layer(root)))
        )
      const a = Context.get(yield* server(), Idempotency)
      const b = Context.get(yield* server(), Idempotency)
      const gate = yield* Deferred.make<void>()
      const { execute, runs } = yield* counter
      const request = { tool: "workspace.create", key: "shared", args: { image: "alpine" } }
      const first = yield* Effect.fork(
        a.once(request, Deferred.await(gate).pipe(Effect.zipRight(execute)), keepAll)
      )
      yield* Effect.sleep("100 millis")
      const second = yield* Effect.fork(b.once(request, execute, keepAll))
      yield* Effect.sleep("200 millis")
      // The second has not run its call: it waits for the first server's claim.
      assert.strictEqual(yield* Ref.get(runs), 0)
      const otherArgs = yield* Effect.flip(
        b.once({ ...request, args: { image: "debian" } }, execute, keepAll)
      )
      assert.strictEqual(otherArgs._tag, "Conflict")
      yield* Deferred.succeed(gate, undefined)
      assert.deepStrictEqual(yield* Fiber.join(first), { envelope: { ok: true, result: 1 }, replayed: false })
      assert.deepStrictEqual(yield* Fiber.join(second), { envelope: { ok: true, result: 1 }, replayed: true })
      assert.strictEqual(yield* Ref.get(runs), 1)
    })))

  it.live("a claim left by a server that died is taken over", () =>
    Effect.scoped(Effect.gen(function*() {
      const root = yield* makeTempDir("microagent-idem3")
      const context = yield* Layer.build(
        Idempotency.layer.pipe(Layer.provideMerge(Database.layer), Layer.provide(Home.layer(root)))
      )
      const idempotency = Context.get(context, Idempotency)
      const sql = Context.get(context, SqlClient.SqlClient)
      const { execute, runs } = yield* counter
      const request = { tool: "workspace.run", key: "orphan", args: { image: "alpine" } }
      // What a server killed in the middle of the call leaves: its claim, no result. Pid 2^22+1 is above
      // Linux's pid limit, so no process has it.
      yield* sql`INSERT INTO mcp_idempotency_claims (tool, key, args_hash, owner, pid, start_time, claimed_at)
        VALUES ('workspace.run', 'orphan', ${hashOf(request.args)}, 'dead', 4194305, '1', 0)`
      const result = yield* idempotency.once(request, execute, keepAll).pipe(Effect.timeout("5 seconds"))
      assert.deepStrictEqual(result, { envelope: { ok: true, result: 1 }, replayed: false })
      assert.strictEqual(yield* Ref.get(runs), 1)
      const left = yield* sql<{ n: number }>`SELECT count(*) AS n FROM mcp_idempotency_claims`
      assert.strictEqual(left[0]!.n, 0, "the claim is released once the result is recorded")
    })))

  it.scoped(`keeps at most ${maxKeys} keys, dropping the oldest`, () =>
    Effect.gen(function*() {
      const idempotency = yield* Idempotency
      const { execute, runs } = yield* counter
      for (let i = 0; i <= maxKeys; i++) {
        yield* idempotency.once({ tool: "t", key: `k${i}`, args: {} }, execute, keepAll)
      }
      const newest = yield* idempotency.once({ tool: "t", key: `k${maxKeys}`, args: {} }, execute, keepAll)
      assert.isTrue(newest.replayed)
      const oldest = yield* idempotency.once({ tool: "t", key: "k0", args: {} }, execute, keepAll)
      assert.isFalse(oldest.replayed)
      assert.strictEqual(yield* Ref.get(runs), maxKeys + 2)
    }).pipe(Effect.provide(environment)))
})

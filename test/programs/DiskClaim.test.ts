/**
 * The claim offline operations (`cp` on a stopped disk, `commit`) hold on a workspace's disk: one holder
 * at a time, a dead holder's claim taken over, released with the scope; `start` takes it too.
 */
import { afterAll, assert, describe, it } from "@effect/vitest"
import { Effect, Either, Layer } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import * as ProcessesLive from "../../src/layers/process/ProcessesLive.ts"
import { create } from "../../src/programs/Create.ts"
import { kill } from "../../src/programs/Halt.ts"
import { claimDisk, claimStoppedDisk } from "../../src/programs/internal/DiskClaim.ts"
import { start } from "../../src/programs/Start.ts"
import { Home } from "../../src/services/Home.ts"
import type { Processes } from "../../src/services/Processes.ts"
import { StateStore } from "../../src/services/StateStore.ts"
import { fakeEnvironment } from "../support/fakeEnvironment.ts"

const root = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-disk-claim-"))
afterAll(() => NodeFs.rmSync(root, { recursive: true, force: true }))

const run = <A, E>(effect: Effect.Effect<A, E, Home | Processes>) =>
  Effect.runPromise(
    Effect.either(effect).pipe(Effect.provide(Layer.merge(Home.layer(root), ProcessesLive.layer)))
  )

describe("claimDisk", () => {
  const dir = NodePath.join(root, "workspaces", "w")
  const file = NodePath.join(dir, "disk.claim")

  it("lets one operation hold the disk and refuses a second with conflict", async () => {
    NodeFs.mkdirSync(dir, { recursive: true })
    const nested = await run(Effect.scoped(Effect.gen(function*() {
      yield* claimDisk("w", "a commit")
      assert.isTrue(NodeFs.existsSync(file))
      return yield* Effect.either(Effect.scoped(claimDisk("w", "an offline cp")))
    })))
    assert.isTrue(Either.isRight(nested))
    const second = Either.getOrThrow(nested)
    assert.isTrue(Either.isLeft(second))
    if (Either.isLeft(second)) {
      assert.strictEqual(second.left._tag, "Conflict")
      assert.include(second.left.message, "a commit")
    }
    assert.isFalse(NodeFs.existsSync(file), "released with its scope")
  })

  it("takes over the claim of a process that is gone", async () => {
    NodeFs.mkdirSync(dir, { recursive: true })
    NodeFs.writeFileSync(file, "999999999 a commit\n")
    const taken = await run(
      Effect.scoped(Effect.map(claimDisk("w", "an offline cp"), () => NodeFs.readFileSync(file, "utf8")))
    )
    assert.deepStrictEqual(taken, Either.right(`${process.pid} an offline cp\n`))
  })
})

describe("the disk's claim against start", () => {
  const held = (name: string) =>
    Effect.gen(function*() {
      const home = yield* Home
      NodeFs.mkdirSync(home.workspaceDir(name), { recursive: true })
      return NodePath.join(home.workspaceDir(name), "disk.claim")
    })

  it.scopedLive("start is refused while an offline operation holds the disk, and boots once it is let go", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "claimed" })
      yield* held("claimed")
      const refused = yield* Effect.scoped(
        Effect.zipRight(claimDisk("claimed", "an offline cp"), Effect.either(start("claimed")))
      )
      assert.isTrue(Either.isLeft(refused) && refused.left._tag === "Conflict")
      if (Either.isLeft(refused)) assert.include(refused.left.message, "an offline cp")
      assert.strictEqual((yield* (yield* StateStore).get("claimed")).state, "prepared", "nothing changed")
      assert.strictEqual((yield* start("claimed")).state, "running")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("an offline operation that claims the disk after a start is a conflict", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "raced" })
      const claim = yield* held("raced")
      yield* start("raced")
      const late = yield* Effect.either(Effect.scoped(claimStoppedDisk("raced", "an offline cp")))
      assert.isTrue(Either.isLeft(late) && late.left._tag === "Conflict")
      if (Either.isLeft(late)) assert.include(late.left.message, "is running now")
      assert.isFalse(NodeFs.existsSync(claim), "the claim is let go with the refusal")
      yield* kill("raced")
    }).pipe(Effect.provide(fakeEnvironment)))
})

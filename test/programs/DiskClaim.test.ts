/**
 * The claim offline operations (`cp` on a stopped disk, `commit`) hold on a workspace's disk: one holder
 * at a time, a dead holder's claim taken over, released with the scope.
 */
import { Effect, Either } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, describe, it } from "vitest"
import { claimDisk } from "../../src/programs/internal/DiskClaim.ts"
import { Home } from "../../src/services/Home.ts"

const root = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-disk-claim-"))
afterAll(() => NodeFs.rmSync(root, { recursive: true, force: true }))

const run = <A, E>(effect: Effect.Effect<A, E, Home>) =>
  Effect.runPromise(Effect.either(effect).pipe(Effect.provide(Home.layer(root))))

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

import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import { spawn } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { stateOf } from "../../src/layers/process/Processes.ts"
import { create } from "../../src/programs/Create.ts"
import { loadSnapshot, snapshotCreate, snapshotList } from "../../src/programs/Snapshot.ts"
import { Home } from "../../src/services/Home.ts"
import { fakeEnvironment } from "../support/fakeEnvironment.ts"

/**
 * A zombie: `sh` starts `sleep 0` in the background and execs `sleep 5`, which never waits for it.
 * `kill(pid, 0)` still succeeds on it, as it does on a killed runtime that nobody reaped yet.
 */
const zombie = Effect.async<number>((resume) => {
  const child = spawn("sh", ["-c", "sleep 0 & echo $!; exec sleep 5"], {
    stdio: ["ignore", "pipe", "ignore"]
  })
  child.stdout.once("data", (chunk: Buffer) => resume(Effect.succeed(Number(chunk.toString().trim()))))
})

describe("snapshot leftovers", () => {
  it.scopedLive("a staging directory whose process is a zombie is swept by the next reader", () =>
    Effect.gen(function*() {
      const home = yield* Home
      yield* create({ image: "alpine", name: "w" })
      const pid = yield* zombie
      yield* Effect.promise(async () => {
        for (let i = 0; i < 100 && stateOf(pid) !== "Z"; i++) await new Promise((r) => setTimeout(r, 20))
      })
      assert.strictEqual(stateOf(pid), "Z", "the helper process is a zombie")
      const dir = NodePath.join(home.workspaceDir("w"), "snapshots")
      NodeFs.mkdirSync(NodePath.join(dir, `.staging-crash-${pid}`), { recursive: true })
      NodeFs.mkdirSync(NodePath.join(dir, `.staging-live-${process.pid}`), { recursive: true })
      assert.deepStrictEqual(yield* snapshotList("w"), [])
      assert.deepStrictEqual(NodeFs.readdirSync(dir), [`.staging-live-${process.pid}`])
    }).pipe(Effect.provide(fakeEnvironment)))
})

describe("forensic snapshots", () => {
  it.scopedLive("are tagged forensic-<time>, marked in the manifest, and refused to every restore", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "f" })
      const manifest = yield* snapshotCreate("f", { forensic: true })
      assert.match(manifest.tag, /^forensic-\d{8}T\d{6}Z$/)
      assert.strictEqual(manifest.forensic, true)
      assert.strictEqual(manifest.kind, "disk")
      const ordinary = yield* snapshotCreate("f", { tag: "plain" })
      assert.isUndefined(ordinary.forensic)
      assert.deepStrictEqual(
        (yield* snapshotList("f")).map((m) => m.tag).sort(),
        [manifest.tag, "plain"].sort()
      )
      const refused = yield* Effect.exit(loadSnapshot("f", manifest.tag))
      assert.isTrue(Exit.isFailure(refused))
      assert.include(String(Exit.isFailure(refused) ? refused.cause : ""), "is forensic")
      assert.strictEqual((yield* loadSnapshot("f", "plain")).manifest.tag, "plain")
    }).pipe(Effect.provide(fakeEnvironment)))
})

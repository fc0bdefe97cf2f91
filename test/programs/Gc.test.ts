import { assert, describe, it } from "@effect/vitest"
import { Effect, Option } from "effect"
import { spawn } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { isAlive, startTimeOf } from "../../src/layers/process/Processes.ts"
import { create } from "../../src/programs/Create.ts"
import { gcReconcile, gcSweep } from "../../src/programs/Gc.ts"
import { vmHandleOf } from "../../src/programs/internal/Reconcile.ts"
import { inspect } from "../../src/programs/Observe.ts"
import { start } from "../../src/programs/Start.ts"
import { Home } from "../../src/services/Home.ts"
import { fakeEnvironment } from "../support/fakeEnvironment.ts"

describe("gc", () => {
  it.scopedLive("reconciles dead VMMs and reaps orphaned runtime directories and their VMMs", () =>
    Effect.gen(function*() {
      const home = yield* Home
      yield* create({ image: "alpine", name: "dead" })
      const running = yield* start("dead")
      process.kill(Option.getOrThrow(vmHandleOf(running)).pid, "SIGKILL")
      yield* create({ image: "alpine", name: "kept" })

      // What a crash can leave: a runtime directory with a live VMM and no record, and an old staging dir.
      const orphanDir = NodePath.join(home.root, "run", "orphan")
      NodeFs.mkdirSync(orphanDir, { recursive: true })
      const orphan = spawn("sleep", ["600"], { detached: true, stdio: "ignore" })
      orphan.unref()
      yield* Effect.sleep("50 millis")
      NodeFs.writeFileSync(NodePath.join(orphanDir, "vmm.pid"), `${orphan.pid} ${startTimeOf(orphan.pid!)}\n`)
      const staging = NodePath.join(home.workspaces, ".staging-abandoned")
      NodeFs.mkdirSync(staging)
      const old = new Date(Date.now() - 60 * 60 * 1000)
      NodeFs.utimesSync(staging, old, old)
      const fresh = NodePath.join(home.workspaces, ".staging-in-progress")
      NodeFs.mkdirSync(fresh)

      const reconciled = yield* gcReconcile()
      assert.deepStrictEqual(reconciled, [{ workspace: "dead", from: "running", to: "failed" }])
      const swept = yield* gcSweep()
      assert.deepStrictEqual(swept.killed, [orphan.pid])
      assert.sameMembers([...swept.removed], [orphanDir, staging])
      yield* Effect.sleep("100 millis")
      assert.isFalse(isAlive(orphan.pid!, undefined))
      assert.isTrue(NodeFs.existsSync(fresh), "a staging directory in use is left alone")
      assert.strictEqual((yield* inspect("kept")).workspace.state, "prepared")
      assert.isTrue(NodeFs.existsSync(home.workspaceDir("kept")))
      assert.isTrue(
        NodeFs.existsSync(home.workspaceDir("dead")),
        "gc never deletes a recorded workspace's disk"
      )
    }).pipe(Effect.provide(fakeEnvironment)))
})

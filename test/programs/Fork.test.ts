/**
 * `fork` on the fake backend: N running children from one capture, all or nothing, and the refusals
 * that leave nothing behind.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Fiber, Option } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { ExecRequest } from "../../src/domain/Exec.ts"
import { Workspace } from "../../src/domain/Workspace.ts"
import { create } from "../../src/programs/Create.ts"
import { exec } from "../../src/programs/Exec.ts"
import { halt } from "../../src/programs/Halt.ts"
import { snapshotCreate } from "../../src/programs/Snapshot.ts"
import { start } from "../../src/programs/Start.ts"
// After the programs it is made of: its inferred type needs theirs.
import { fork } from "../../src/programs/Fork.ts"
import { reconcileAll } from "../../src/runtime/Runtime.ts"
import { Home } from "../../src/services/Home.ts"
import { Processes } from "../../src/services/Processes.ts"
import { StateStore } from "../../src/services/StateStore.ts"
import { fakeEnvironment } from "../support/fakeEnvironment.ts"
import { armFault, untilExists } from "../support/faults.ts"

const failureTag = (exit: Exit.Exit<unknown, { readonly _tag: string }>) =>
  Exit.isFailure(exit) ? Option.getOrThrow(Cause.failureOption(exit.cause))._tag : "success"

const snapshotsOf = (name: string) =>
  Effect.map(Home, (home) => {
    const dir = NodePath.join(home.workspaceDir(name), "snapshots")
    return NodeFs.existsSync(dir) ? NodeFs.readdirSync(dir) : []
  })

describe("fork", () => {
  it.scopedLive("makes running children with the parent's disk, and removes the capture", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "parent" })
      yield* start("parent")
      yield* exec("parent", new ExecRequest({ argv: ["sh", "-c", "echo from-parent > tmp/file"] }))
      const store = yield* StateStore
      const result = yield* fork("parent", { count: 2, namePrefix: "kid" })
      assert.deepStrictEqual(result.children.map((c) => [c.name, c.state, c.hostname]), [
        ["kid-1", "running", "kid-1"],
        ["kid-2", "running", "kid-2"]
      ])
      for (const kid of ["kid-1", "kid-2"]) {
        const read = yield* exec(kid, new ExecRequest({ argv: ["cat", "tmp/file"] }))
        assert.strictEqual(read.stdout, "from-parent\n")
      }
      assert.strictEqual((yield* store.get("parent")).state, "running")
      assert.deepStrictEqual(yield* snapshotsOf("parent"), [])
      // The fork ended: its children are ordinary workspaces, without the mark of a fork under way.
      assert.deepStrictEqual(result.children.map((c) => c.forkedBy), [undefined, undefined])
      assert.isUndefined((yield* store.get("kid-1")).forkedBy)
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("a fork whose process died half way is undone by the next reconcile: children and capture", () =>
    Effect.gen(function*() {
      const store = yield* StateStore
      yield* create({ image: "alpine", name: "p4" })
      yield* start("p4")
      yield* fork("p4", { count: 2, namePrefix: "orphan" })
      // What a runtime killed mid-fork leaves: children still marked, and the capture, by a dead process.
      const dead = NodeChild.spawnSync("true").pid!
      const deadMark = { pid: dead, startTime: "" }
      for (const child of ["orphan-1", "orphan-2"]) {
        yield* store.update(
          child,
          (ws) => new Workspace({ ...ws, forkedBy: { ...deadMark, snapshot: "p4:fork-dead" } })
        )
      }
      yield* snapshotCreate("p4", { tag: "fork-dead", forkedBy: deadMark })
      // A fork under way in a live process is left alone.
      const self = (yield* Processes).self
      yield* snapshotCreate("p4", {
        tag: "fork-live",
        forkedBy: { pid: self.pid, startTime: self.startTime ?? "" }
      })
      yield* reconcileAll({ reapOrphans: true })
      assert.deepStrictEqual((yield* store.list).map((w) => w.name), ["p4"], "the children went")
      assert.deepStrictEqual(yield* snapshotsOf("p4"), ["fork-live"], "the dead fork's capture went")
      assert.strictEqual((yield* store.get("p4")).state, "running")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("refuses a taken child name, a stopped parent and a bad count, with nothing made", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "p2" })
      yield* start("p2")
      yield* create({ image: "alpine", name: "p2-fork-2" })
      const store = yield* StateStore
      const before = (yield* store.list).length
      assert.strictEqual(failureTag(yield* Effect.exit(fork("p2", { count: 2 }))), "Conflict")
      assert.strictEqual(failureTag(yield* Effect.exit(fork("p2", { count: 0 }))), "InvalidInput")
      assert.strictEqual(failureTag(yield* Effect.exit(fork("p2", { count: 17 }))), "InvalidInput")
      assert.strictEqual(failureTag(yield* Effect.exit(fork("p2", { namePrefix: "bad*" }))), "InvalidInput")
      assert.strictEqual((yield* store.list).length, before, "no child was made")
      assert.deepStrictEqual(yield* snapshotsOf("p2"), [], "nothing was captured")
      yield* halt("p2")
      assert.strictEqual(failureTag(yield* Effect.exit(fork("p2", { namePrefix: "other" }))), "Conflict")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("an interrupted fork (a caller's Ctrl-C) takes the children it made with it", () =>
    Effect.gen(function*() {
      const store = yield* StateStore
      yield* create({ image: "alpine", name: "p3" })
      yield* start("p3")
      // The children's starts pause once their fake VMMs run (see FaultPoint.ts).
      const marker = yield* armFault("vmm.booting")
      const fiber = yield* Effect.fork(fork("p3", { count: 3, namePrefix: "cut" }))
      yield* untilExists(marker)
      assert.isTrue((yield* store.list).some((w) => w.name.startsWith("cut-")), "a child was made")
      assert.isTrue(Exit.isInterrupted(yield* Fiber.interrupt(fiber)))
      assert.deepStrictEqual((yield* store.list).map((w) => w.name), ["p3"], "no child is left")
      assert.deepStrictEqual(yield* snapshotsOf("p3"), [], "the capture is gone")
      assert.strictEqual((yield* store.get("p3")).state, "running")
    }).pipe(Effect.provide(fakeEnvironment)))
})

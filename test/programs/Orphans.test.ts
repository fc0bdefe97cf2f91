/**
 * Orphan VMMs: found by process name and by the runtime directory their command line names, ended
 * unless a live record owns them. A stand-in VMM is `sleep` copied to a file named like QEMU inside
 * the workspace's runtime directory, so its name and command line look like a VMM's of that state
 * directory without booting anything.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { spawn } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import type { Workspace } from "../../src/domain/Workspace.ts"
import { isAlive, startTimeOf, waitGone } from "../../src/layers/process/Processes.ts"
import { endVmm, vmmsOf } from "../../src/layers/process/Vmms.ts"
import { create } from "../../src/programs/Create.ts"
import { remove } from "../../src/programs/Delete.ts"
import { gcSweep } from "../../src/programs/Gc.ts"
import { kill } from "../../src/programs/Halt.ts"
import { reapOrphanVmms } from "../../src/programs/internal/Orphans.ts"
import { ownedByMe } from "../../src/programs/internal/Reconcile.ts"
import { Home } from "../../src/services/Home.ts"
import { StateStore } from "../../src/services/StateStore.ts"
import { fakeEnvironment } from "../support/fakeEnvironment.ts"

const sleepBinary = ["/usr/bin/sleep", "/bin/sleep"].find((path) => NodeFs.existsSync(path)) ?? "sleep"

/** Starts a process called `binaryName` from `dir`, killed when the scope closes. */
const standIn = (dir: string, binaryName: string) =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      NodeFs.mkdirSync(dir, { recursive: true, mode: 0o700 })
      const binary = NodePath.join(dir, binaryName)
      if (!NodeFs.existsSync(binary)) {
        NodeFs.copyFileSync(sleepBinary, binary)
        NodeFs.chmodSync(binary, 0o700)
      }
      const child = spawn(binary, ["infinity"], { detached: true, stdio: "ignore" })
      child.unref()
      const pid = child.pid!
      // Until exec has happened, /proc still shows the parent's name.
      for (
        let i = 0;
        i < 200 && !NodeFs.readFileSync(`/proc/${pid}/comm`, "utf8").startsWith(binaryName.slice(0, 15));
        i++
      ) {
        await new Promise((resolve) => setTimeout(resolve, 10))
      }
      return pid
    }),
    (pid) =>
      Effect.sync(() => {
        try {
          process.kill(pid, "SIGKILL")
        } catch {
          // Ended by the test.
        }
      })
  )

const qemuIn = (dir: string) => standIn(dir, "qemu-system-x86_64")

const gone = (pid: number) => waitGone(pid, undefined, "5 seconds")

describe("orphan VMMs", () => {
  it.scopedLive("are found by name and runtime directory; other processes are not", () =>
    Effect.gen(function*() {
      const home = yield* Home
      const vmm = yield* qemuIn(home.runtimeDir("w1"))
      const other = yield* standIn(home.runtimeDir("w2"), "not-a-vmm")
      const found = vmmsOf(home.root)
      assert.deepStrictEqual(found.map((v) => [v.pid, v.workspace, v.runtimeDir]), [[
        vmm,
        "w1",
        home.runtimeDir("w1")
      ]])
      assert.isFalse(found.some((v) => v.pid === other))
      // Another state directory's VMMs are not this one's.
      assert.deepStrictEqual(vmmsOf(`${home.root}-other`), [])
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("a recycled pid (another start time) is never signalled", () =>
    Effect.gen(function*() {
      const home = yield* Home
      const pid = yield* qemuIn(home.runtimeDir("w1"))
      const [vmm] = vmmsOf(home.root)
      assert.strictEqual(vmm?.pid, pid)
      const ended = yield* endVmm({ ...vmm!, startTime: "1" })
      assert.isTrue(ended, "the process with that identity is gone")
      assert.isTrue(isAlive(pid, startTimeOf(pid)), "the process now holding the pid lives on")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("gc ends a VMM whose record failed, or has no record; a live owner keeps its own", () =>
    Effect.gen(function*() {
      const home = yield* Home
      const store = yield* StateStore
      yield* create({ image: "alpine", name: "failed-one" })
      yield* store.transition("failed-one", "start")
      yield* store.transition("failed-one", "bootFailed")
      yield* create({ image: "alpine", name: "booting" })
      yield* store.transition("booting", "start", { patch: yield* ownedByMe })
      yield* create({ image: "alpine", name: "running" })
      const orphan = yield* qemuIn(home.runtimeDir("failed-one"))
      const unrecorded = yield* qemuIn(home.runtimeDir("nobody"))
      const booting = yield* qemuIn(home.runtimeDir("booting"))
      const owned = yield* qemuIn(home.runtimeDir("running"))
      const stale = yield* qemuIn(home.runtimeDir("running"))
      yield* store.transition("running", "start")
      yield* store.transition("running", "booted", {
        patch: (ws) =>
          ({
            ...ws,
            vm: {
              backend: "qemu",
              pid: owned,
              pidStartTime: startTimeOf(owned),
              channel: { _tag: "UnixSocket", path: NodePath.join(ws.runtimeDir, "agent.sock") },
              consoleLog: NodePath.join(ws.runtimeDir, "console.log")
            }
          }) as Workspace
      })
      const report = yield* gcSweep()
      assert.deepStrictEqual([...report.killed].sort(), [orphan, unrecorded, stale].sort())
      for (const pid of [orphan, unrecorded, stale]) assert.isTrue(yield* gone(pid))
      assert.isTrue(isAlive(booting, undefined), "a start under way keeps the VMM it launched")
      assert.isTrue(isAlive(owned, undefined), "the VMM the record names lives on")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("kill works from failed and ends the VMM; delete ends one too", () =>
    Effect.gen(function*() {
      const home = yield* Home
      const store = yield* StateStore
      for (const name of ["k", "d"]) {
        yield* create({ image: "alpine", name })
        yield* store.transition(name, "start")
        yield* store.transition(name, "bootFailed")
      }
      const k = yield* qemuIn(home.runtimeDir("k"))
      const d = yield* qemuIn(home.runtimeDir("d"))
      const killed = yield* kill("k")
      assert.strictEqual(killed.state, "stopped")
      assert.isTrue(yield* gone(k))
      assert.isTrue(isAlive(d, undefined), "only the named workspace's VMM")
      const deleted = yield* remove("d")
      assert.isTrue(deleted.deleted)
      assert.isTrue(yield* gone(d))
      assert.deepStrictEqual(yield* reapOrphanVmms(), [])
    }).pipe(Effect.provide(fakeEnvironment)))
})

/**
 * Named volumes on the fake backend, where a volume is a host directory beside its ext4 file and a
 * mount a symlink in the fake guest's root: data outlives the workspace that wrote it, a read-only
 * mount is a copy that never writes back, claims behave as on a real backend, and a start that fails
 * or is interrupted after claiming its volumes releases them, records `failed` and leaves no fake VMM.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Fiber, Option, Redacted } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { ExecRequest } from "../../src/domain/Exec.ts"
import { FileCopy } from "../../src/domain/FileCopy.ts"
import { Mount, SecretRef } from "../../src/domain/Workspace.ts"
import { isAlive } from "../../src/layers/process/Processes.ts"
import { create } from "../../src/programs/Create.ts"
import { remove } from "../../src/programs/Delete.ts"
import { exec } from "../../src/programs/Exec.ts"
import { halt, kill } from "../../src/programs/Halt.ts"
import { start } from "../../src/programs/Start.ts"
import { volumeCreate, volumeInspect, volumeRemove } from "../../src/programs/Volume.ts"
import { volumeDirectoryOf } from "../../src/services/Hypervisor.ts"
import { StateStore } from "../../src/services/StateStore.ts"
import { fakeEnvironment } from "../support/fakeEnvironment.ts"
import { armFault, untilExists } from "../support/faults.ts"

const sh = (script: string) => new ExecRequest({ argv: ["sh", "-c", script] })

const failureTag = (exit: Exit.Exit<unknown, { readonly _tag: string }>) =>
  Exit.isFailure(exit) ? Option.getOrThrow(Cause.failureOption(exit.cause))._tag : "success"

const volume = (source: string, target: string, readOnly = false) =>
  new Mount({ kind: "volume", source, target, readOnly })

/** The fake VMM's pid, from the pid file the launch wrote in the runtime directory. */
const vmmPid = (runtimeDir: string) =>
  Number(NodeFs.readFileSync(NodePath.join(runtimeDir, "vmm.pid"), "utf8").split(" ")[0])

describe("named volumes on the fake backend", () => {
  it.scopedLive("data written through one workspace is seen by the next; read-only mounts never write back", () =>
    Effect.gen(function*() {
      const store = yield* StateStore
      const created = yield* volumeCreate("data", 16)
      const data = volumeDirectoryOf(created.path)
      yield* create({ image: "alpine", name: "writer", mounts: [volume("data", "/data")] })
      yield* start("writer")
      assert.strictEqual((yield* volumeInspect("data")).attachedTo, "writer")
      const wrote = yield* exec("writer", sh("mkdir -p data/sub && echo kept > data/sub/f"))
      assert.strictEqual(wrote.exitCode, 0, wrote.stderr)
      assert.strictEqual(NodeFs.readFileSync(NodePath.join(data, "sub", "f"), "utf8"), "kept\n")
      yield* halt("writer")
      assert.isUndefined((yield* volumeInspect("data")).attachedTo)
      // Unmounted with the VM: an empty mountpoint stays, as on a real disk.
      const writerRoot = (yield* store.get("writer")).rootfsPath
      assert.isTrue(NodeFs.lstatSync(NodePath.join(writerRoot, "data")).isDirectory())
      assert.deepStrictEqual(NodeFs.readdirSync(NodePath.join(writerRoot, "data")), [])

      yield* create({ image: "alpine", name: "reader", mounts: [volume("data", "/mnt/d", true)] })
      yield* create({ image: "alpine", name: "other", mounts: [volume("data", "/data")] })
      yield* start("reader")
      assert.deepStrictEqual((yield* volumeInspect("data")).readers, ["reader"])
      const read = yield* exec("reader", sh("cat mnt/d/sub/f"))
      assert.strictEqual(read.stdout, "kept\n")
      // The host's root may write the copy; the volume never sees it.
      yield* exec("reader", sh("echo lost > mnt/d/new; echo changed > mnt/d/sub/f"))
      assert.deepStrictEqual(NodeFs.readdirSync(data).sort(), ["sub"])
      assert.strictEqual(NodeFs.readFileSync(NodePath.join(data, "sub", "f"), "utf8"), "kept\n")
      // A running reader stops a read-write claim, as on qemu; the refusal changes nothing.
      assert.strictEqual(failureTag(yield* Effect.exit(start("other"))), "Conflict")
      assert.strictEqual((yield* store.get("other")).state, "prepared")
      const runtimeDir = (yield* store.get("reader")).runtimeDir
      yield* kill("reader")
      assert.deepStrictEqual((yield* volumeInspect("data")).readers, [])
      assert.deepStrictEqual(
        NodeFs.readdirSync(runtimeDir).filter((f) => f.startsWith("fake-disk-")),
        [],
        "the read-only copy goes with the VM"
      )

      yield* start("other")
      assert.strictEqual((yield* exec("other", sh("cat data/sub/f"))).stdout, "kept\n")
      yield* remove("other", { force: true })
      assert.isUndefined((yield* volumeInspect("data")).attachedTo)
      yield* volumeRemove("data")
      assert.isFalse(NodeFs.existsSync(data), "the fake's data goes with the volume")
      assert.isFalse(NodeFs.existsSync(created.path))
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("files delivered at start land on the mounted volume, and a guest's symlink keeps them in its root", () =>
    Effect.gen(function*() {
      const store = yield* StateStore
      const host = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-files-"))
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => NodeFs.rmSync(host, { recursive: true, force: true }))
      )
      const source = NodePath.join(host, "conf")
      NodeFs.writeFileSync(source, "setting=1\n")
      const outside = NodePath.join(host, "outside")
      NodeFs.mkdirSync(outside)
      const created = yield* volumeCreate("conf", 16)
      yield* create({
        image: "alpine",
        name: "files",
        mounts: [volume("conf", "/data")],
        files: [
          new FileCopy({ source, target: "/data/app/conf" }),
          new FileCopy({ source, target: "/link/conf" })
        ]
      })
      // A symlink in the guest to an absolute path names the guest's own directory of that name.
      const root = (yield* store.get("files")).rootfsPath
      NodeFs.symlinkSync(outside, NodePath.join(root, "link"))
      NodeFs.mkdirSync(NodePath.join(root, outside.slice(1)), { recursive: true })
      yield* start("files")
      assert.strictEqual(
        NodeFs.readFileSync(NodePath.join(volumeDirectoryOf(created.path), "app", "conf"), "utf8"),
        "setting=1\n"
      )
      assert.strictEqual(
        NodeFs.readFileSync(NodePath.join(root, outside.slice(1), "conf"), "utf8"),
        "setting=1\n"
      )
      assert.deepStrictEqual(NodeFs.readdirSync(outside), [])
      yield* remove("files", { force: true })
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("a mountpoint with files in it is refused at launch: failed, volume released, files untouched", () =>
    Effect.gen(function*() {
      const store = yield* StateStore
      yield* volumeCreate("busy", 16)
      yield* create({ image: "alpine", name: "full", mounts: [volume("busy", "/etc")] })
      const root = (yield* store.get("full")).rootfsPath
      NodeFs.writeFileSync(NodePath.join(root, "etc", "hostname"), "full\n")
      assert.strictEqual(failureTag(yield* Effect.exit(start("full"))), "Unsupported")
      const after = yield* store.get("full")
      assert.strictEqual(after.state, "failed")
      assert.isUndefined((yield* volumeInspect("busy")).attachedTo)
      assert.isFalse(isAlive(vmmPid(after.runtimeDir), undefined))
      assert.strictEqual(NodeFs.readFileSync(NodePath.join(root, "etc", "hostname"), "utf8"), "full\n")
      yield* remove("full", { force: true })
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("a start that fails after claiming its volumes releases them and leaves no fake VMM", () =>
    Effect.gen(function*() {
      const store = yield* StateStore
      yield* volumeCreate("claimed", 16)
      yield* create({
        image: "alpine",
        name: "broken",
        mounts: [volume("claimed", "/data")],
        secrets: [new SecretRef({ name: "TOKEN", source: "env:X" })]
      })
      // Where the guest's /run should be, a file: the secrets cannot be delivered once the VM is up.
      const root = (yield* store.get("broken")).rootfsPath
      NodeFs.writeFileSync(NodePath.join(root, "run"), "not a directory\n")
      const secretValues = [{ name: "TOKEN", value: Redacted.make(new Uint8Array(Buffer.from("v"))) }]
      const failed = yield* Effect.exit(start("broken", { secretValues }))
      assert.strictEqual(failureTag(failed), "Permanent")
      const after = yield* store.get("broken")
      assert.strictEqual(after.state, "failed")
      assert.isUndefined(after.vm)
      const pid = vmmPid(after.runtimeDir)
      assert.isFalse(isAlive(pid, undefined), `fake VMM ${pid} is gone`)
      const claimed = yield* volumeInspect("claimed")
      assert.isUndefined(claimed.attachedTo)
      assert.deepStrictEqual(claimed.readers, [])
      assert.isFalse(NodeFs.lstatSync(NodePath.join(root, "data")).isSymbolicLink(), "unmounted")
      // The cause removed, the same workspace starts and gets its volume again.
      NodeFs.rmSync(NodePath.join(root, "run"))
      yield* start("broken", { secretValues })
      assert.strictEqual((yield* volumeInspect("claimed")).attachedTo, "broken")
      yield* remove("broken", { force: true })
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("a start interrupted after the fake VMM launched records failed, kills it and releases the volume", () =>
    Effect.gen(function*() {
      const store = yield* StateStore
      yield* volumeCreate("held", 16)
      yield* create({ image: "alpine", name: "cut", mounts: [volume("held", "/data")] })
      // The launch pauses once its VMM runs and its disks are mounted (see FaultPoint.ts).
      const marker = yield* armFault("vmm.booting")
      const fiber = yield* Effect.fork(start("cut"))
      yield* untilExists(marker)
      const starting = yield* store.get("cut")
      assert.strictEqual(starting.state, "starting")
      const pid = vmmPid(starting.runtimeDir)
      assert.isTrue(isAlive(pid, undefined))
      assert.strictEqual((yield* volumeInspect("held")).attachedTo, "cut")
      assert.isTrue(NodeFs.lstatSync(NodePath.join(starting.rootfsPath, "data")).isSymbolicLink())

      const exit = yield* Fiber.interrupt(fiber)
      assert.isTrue(Exit.isInterrupted(exit))
      const after = yield* store.get("cut")
      assert.strictEqual(after.state, "failed")
      assert.isUndefined(after.vm)
      assert.isFalse(isAlive(pid, undefined), `fake VMM ${pid} is gone`)
      assert.isUndefined((yield* volumeInspect("held")).attachedTo)
      assert.isFalse(
        NodeFs.lstatSync(NodePath.join(starting.rootfsPath, "data")).isSymbolicLink(),
        "unmounted"
      )
      const events = (yield* store.events("cut")).map((e) => e.detail)
      assert.isTrue(events.some((detail) => detail.includes("start interrupted")), events.join("\n"))
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("a start interrupted after the launch, while files are delivered, kills the fake VMM and releases the volume", () =>
    Effect.gen(function*() {
      const store = yield* StateStore
      const host = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-late-"))
      const source = NodePath.join(host, "conf")
      NodeFs.writeFileSync(source, "x\n")
      // The delivery's helper command finds this `dirname` first on the PATH: it says it runs, then hangs.
      const bin = NodePath.join(host, "bin")
      const marker = NodePath.join(host, "delivering")
      NodeFs.mkdirSync(bin)
      NodeFs.writeFileSync(NodePath.join(bin, "dirname"), `#!/bin/sh\ntouch ${marker}\nexec sleep 60\n`, {
        mode: 0o755
      })
      const path = process.env.PATH
      yield* Effect.acquireRelease(
        Effect.sync(() => (process.env.PATH = `${bin}:${path}`)),
        () =>
          Effect.sync(() => {
            process.env.PATH = path
            NodeFs.rmSync(host, { recursive: true, force: true })
          })
      )
      yield* volumeCreate("late", 16)
      yield* create({
        image: "alpine",
        name: "late",
        mounts: [volume("late", "/data")],
        files: [new FileCopy({ source, target: "/etc/app/conf" })]
      })
      const fiber = yield* Effect.fork(start("late"))
      yield* untilExists(marker)
      const starting = yield* store.get("late")
      const pid = vmmPid(starting.runtimeDir)
      assert.isTrue(isAlive(pid, undefined), "the fake VMM was launched")

      const exit = yield* Fiber.interrupt(fiber)
      assert.isTrue(Exit.isInterrupted(exit))
      const after = yield* store.get("late")
      assert.strictEqual(after.state, "failed")
      assert.isUndefined(after.vm)
      assert.isFalse(isAlive(pid, undefined), `fake VMM ${pid} is gone`)
      assert.isUndefined((yield* volumeInspect("late")).attachedTo)
      assert.isFalse(
        NodeFs.lstatSync(NodePath.join(starting.rootfsPath, "data")).isSymbolicLink(),
        "unmounted"
      )
      process.env.PATH = path
      yield* start("late")
      assert.strictEqual(
        NodeFs.readFileSync(NodePath.join(after.rootfsPath, "etc", "app", "conf"), "utf8"),
        "x\n"
      )
      yield* remove("late", { force: true })
    }).pipe(Effect.provide(fakeEnvironment)))
})

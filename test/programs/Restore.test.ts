/**
 * Roll back (`start --from-snapshot`), `clone` and `create --from-snapshot` on the fake backend: the
 * disk handling, the records and every refusal. Memory restores on real VMs are in
 * test/e2e/snapshots.test.ts.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import { spawnSync } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { ExecRequest } from "../../src/domain/Exec.ts"
import { Mount, PublishedPort, SecretRef } from "../../src/domain/Workspace.ts"
import { clone, createFromSnapshot } from "../../src/programs/Clone.ts"
import { create } from "../../src/programs/Create.ts"
import { exec } from "../../src/programs/Exec.ts"
import { halt, kill } from "../../src/programs/Halt.ts"
import { snapshotCreate } from "../../src/programs/Snapshot.ts"
import { start } from "../../src/programs/Start.ts"
import { Home } from "../../src/services/Home.ts"
import { StateStore } from "../../src/services/StateStore.ts"
import { fakeEnvironment } from "../support/fakeEnvironment.ts"

const sh = (script: string) => new ExecRequest({ argv: ["sh", "-c", script] })
const read = (name: string) => exec(name, sh("cat tmp/file")).pipe(Effect.map((r) => r.stdout))

const snapshotDir = (name: string, tag: string) =>
  Effect.map(Home, (home) => NodePath.join(home.workspaceDir(name), "snapshots", tag))

/** Rewrites one field of a snapshot's manifest (a snapshot taken elsewhere, or damaged). */
const editManifest = (name: string, tag: string, edit: (json: Record<string, unknown>) => void) =>
  Effect.flatMap(snapshotDir(name, tag), (dir) =>
    Effect.sync(() => {
      const file = NodePath.join(dir, "manifest.json")
      const json = JSON.parse(NodeFs.readFileSync(file, "utf8")) as Record<string, unknown>
      edit(json)
      NodeFs.writeFileSync(file, JSON.stringify(json))
    }))

describe("start --from-snapshot", () => {
  it.scopedLive("a disk snapshot rolls the disk back and boots; the current disk survives a refusal", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "w" })
      yield* start("w")
      yield* exec("w", sh("echo before > tmp/file"))
      yield* halt("w")
      const manifest = yield* snapshotCreate("w", { tag: "cold" })
      assert.strictEqual(manifest.kind, "disk")
      yield* start("w")
      yield* exec("w", sh("echo after > tmp/file"))

      // Running: refused (conflict), nothing changes.
      const running = yield* Effect.flip(start("w", { fromSnapshot: "cold" }))
      assert.strictEqual(running._tag, "Conflict")
      assert.strictEqual(yield* read("w"), "after\n")
      yield* halt("w")

      // Unknown tag, bad tag: refused before anything changes.
      assert.strictEqual((yield* Effect.flip(start("w", { fromSnapshot: "nope" })))._tag, "NotFound")
      assert.strictEqual((yield* Effect.flip(start("w", { fromSnapshot: "../x" })))._tag, "InvalidInput")
      // Another backend's snapshot: refused, and the workspace keeps its disk and its state.
      yield* editManifest("w", "cold", (json) => (json.backend = "qemu"))
      const other = yield* Effect.flip(start("w", { fromSnapshot: "cold" }))
      assert.strictEqual(other._tag, "Unsupported")
      const store = yield* StateStore
      assert.strictEqual((yield* store.get("w")).state, "halted")
      yield* editManifest("w", "cold", (json) => (json.backend = "fake"))
      yield* start("w")
      assert.strictEqual(yield* read("w"), "after\n")
      yield* halt("w")

      // What a restore killed between its copy and its rename left (its process is gone).
      const home = yield* Home
      const dead = spawnSync("true").pid
      const leftover = NodePath.join(home.workspaceDir("w"), `.rootfs.restore-cold-${dead}`)
      NodeFs.mkdirSync(leftover)
      const restored = yield* start("w", { fromSnapshot: "cold" })
      assert.strictEqual(restored.state, "running")
      assert.strictEqual(yield* read("w"), "before\n")
      // No copy left beside the disk: neither this restore's nor the dead one's.
      assert.deepStrictEqual(
        NodeFs.readdirSync(home.workspaceDir("w")).filter((entry) => entry.startsWith(".")),
        []
      )
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("a roll back whose VM does not start gives the workspace its disk back", () =>
    Effect.gen(function*() {
      // The fake backend cannot publish ports: its launch fails after the disk was swapped.
      yield* create({
        image: "alpine",
        name: "p",
        ports: [
          new PublishedPort({
            hostIp: "127.0.0.1",
            hostPort: 40000 + (process.pid % 20000),
            guestPort: 80,
            protocol: "tcp"
          })
        ]
      })
      const home = yield* Home
      const file = NodePath.join(home.workspaceDir("p"), "rootfs", "tmp", "file")
      NodeFs.writeFileSync(file, "snapshotted\n")
      yield* snapshotCreate("p", { tag: "s" })
      NodeFs.writeFileSync(file, "current\n")
      const failed = yield* Effect.flip(start("p", { fromSnapshot: "s" }))
      assert.strictEqual(failed._tag, "Unsupported")
      assert.strictEqual(NodeFs.readFileSync(file, "utf8"), "current\n")
      assert.deepStrictEqual(
        NodeFs.readdirSync(home.workspaceDir("p")).filter((entry) => entry.startsWith(".")),
        []
      )
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("a memory snapshot is restored through the backend's restore, at the captured size", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "m", memoryMiB: 384 })
      yield* start("m", { memoryMiB: 320 })
      yield* exec("m", sh("echo captured > tmp/file"))
      const manifest = yield* snapshotCreate("m", { tag: "live" })
      assert.strictEqual(manifest.kind, "memory")
      assert.strictEqual(manifest.resources.memoryMiB, 320)
      yield* exec("m", sh("echo later > tmp/file"))
      yield* kill("m")
      // Another memory size than the captured one: refused.
      const resized = yield* Effect.flip(start("m", { fromSnapshot: "live", memoryMiB: 512 }))
      assert.strictEqual(resized._tag, "Conflict")
      const cpus = yield* Effect.flip(start("m", { fromSnapshot: "live", cpus: 7 }))
      assert.strictEqual(cpus._tag, "Conflict")
      // Secrets are delivered after the resume (the captured memory holds none: wiped before capture).
      const restored = yield* start("m", {
        fromSnapshot: "live",
        secrets: [new SecretRef({ name: "TOKEN", source: "env:X" })],
        secretValues: [{ name: "TOKEN", value: Redacted.make(new TextEncoder().encode("v")) }]
      })
      // The captured memory size, not the record's.
      assert.strictEqual(restored.launched?.memoryMiB, 320)
      assert.strictEqual(yield* read("m"), "captured\n")
      assert.strictEqual((yield* exec("m", sh("cat run/secrets/TOKEN"))).stdout, "v")
      const console = NodeFs.readFileSync(NodePath.join(restored.runtimeDir, "console.log"), "utf8")
      assert.include(console, "fake: restored from")
      assert.include(console, "vm.state")
    }).pipe(Effect.provide(fakeEnvironment)))
})

describe("clone and create --from-snapshot", () => {
  it.scopedLive("clone copies a stopped workspace with its own identity and refuses a running one", () =>
    Effect.gen(function*() {
      yield* create({
        image: "alpine",
        name: "src",
        env: { A: "1" },
        entrypoint: "true",
        mounts: [
          new Mount({ kind: "volume", source: "data", target: "/data", readOnly: false }),
          new Mount({ kind: "volume", source: "ref", target: "/ref", readOnly: true })
        ]
      })
      const store = yield* StateStore
      const home = yield* Home
      NodeFs.writeFileSync(NodePath.join(home.workspaceDir("src"), "rootfs", "tmp", "file"), "src\n")
      const copy = yield* clone("src", "dst")
      assert.strictEqual(copy.source, "src")
      assert.strictEqual(copy.workspace.name, "dst")
      assert.strictEqual(copy.workspace.state, "prepared")
      assert.strictEqual(copy.workspace.hostname, "dst")
      assert.deepStrictEqual(copy.workspace.env, { A: "1" })
      assert.strictEqual(copy.workspace.entrypoint, "true")
      assert.deepStrictEqual(copy.droppedMounts.map((m) => m.target), ["/data"])
      assert.deepStrictEqual(copy.workspace.mounts.map((m) => m.target), ["/ref"])
      const recorded = yield* store.get("dst")
      assert.strictEqual(recorded.rootfsPath, NodePath.join(home.workspaceDir("dst"), "rootfs"))
      assert.strictEqual(
        NodeFs.readFileSync(NodePath.join(recorded.rootfsPath, "tmp", "file"), "utf8"),
        "src\n"
      )
      // Independent disks.
      NodeFs.writeFileSync(NodePath.join(home.workspaceDir("src"), "rootfs", "tmp", "file"), "changed\n")
      assert.strictEqual(
        NodeFs.readFileSync(NodePath.join(recorded.rootfsPath, "tmp", "file"), "utf8"),
        "src\n"
      )

      assert.strictEqual((yield* Effect.flip(clone("src", "dst")))._tag, "Conflict")
      assert.strictEqual((yield* Effect.flip(clone("src", "bad name")))._tag, "InvalidInput")
      assert.strictEqual((yield* Effect.flip(clone("missing", "x")))._tag, "NotFound")

      yield* create({ image: "alpine", name: "live" })
      yield* start("live")
      const running = yield* Effect.flip(clone("live", "copy"))
      assert.strictEqual(running._tag, "Conflict")
      assert.include(running.message, "running")
      // Nothing was left behind by the refusals.
      assert.isFalse(NodeFs.existsSync(home.workspaceDir("copy")))
      assert.strictEqual((yield* store.find("copy"))._tag, "None")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("create --from-snapshot takes the snapshot's disk; bad references are refused", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "w" })
      yield* start("w")
      yield* exec("w", sh("echo snap > tmp/file"))
      yield* snapshotCreate("w", { tag: "t1" })
      yield* exec("w", sh("echo later > tmp/file"))

      // A memory snapshot: the copy's first start resumes its VM (the fake backend says so in its
      // console), once; the state file goes with it.
      const copy = yield* createFromSnapshot("n", "w:t1")
      assert.strictEqual(copy.snapshot, "t1")
      assert.strictEqual(copy.workspace.hostname, "n")
      assert.strictEqual(copy.firstStart, "resume")
      assert.strictEqual(copy.workspace.pendingResume?.snapshot, "w:t1")
      const home = yield* Home
      const state = NodePath.join(home.workspaceDir("n"), "vm.state")
      assert.isTrue(NodeFs.existsSync(state))
      // The resumed VM has the captured size: another one is refused before anything changes.
      assert.strictEqual((yield* Effect.flip(start("n", { memoryMiB: 1024 })))._tag, "Conflict")
      const resumed = yield* start("n")
      assert.isUndefined(resumed.pendingResume)
      assert.isFalse(NodeFs.existsSync(state))
      const console = () => NodeFs.readFileSync(NodePath.join(resumed.runtimeDir, "console.log"), "utf8")
      assert.include(console(), "fake: restored from")
      assert.strictEqual(yield* read("n"), "snap\n")
      assert.strictEqual(yield* read("w"), "later\n")
      yield* halt("n")
      yield* start("n")
      assert.notInclude(console(), "fake: restored from")

      // A disk snapshot: the copy boots.
      yield* halt("w")
      yield* snapshotCreate("w", { tag: "cold" })
      const cold = yield* createFromSnapshot("c", "w:cold")
      assert.strictEqual(cold.firstStart, "boot")
      assert.isUndefined(cold.workspace.pendingResume)

      assert.strictEqual((yield* Effect.flip(createFromSnapshot("x", "w")))._tag, "InvalidInput")
      assert.strictEqual((yield* Effect.flip(createFromSnapshot("x", "w:nope")))._tag, "NotFound")
      assert.strictEqual((yield* Effect.flip(createFromSnapshot("x", "ghost:t1")))._tag, "NotFound")
      assert.strictEqual((yield* Effect.flip(createFromSnapshot("n", "w:t1")))._tag, "Conflict")
      yield* editManifest("w", "t1", (json) => (json.backend = "qemu"))
      assert.strictEqual((yield* Effect.flip(createFromSnapshot("x", "w:t1")))._tag, "Unsupported")
    }).pipe(Effect.provide(fakeEnvironment)))
})

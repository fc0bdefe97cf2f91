import { assert, describe, it } from "@effect/vitest"
import { DateTime, Duration, Effect, Exit } from "effect"
import { execFileSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import * as NodeFs from "node:fs"
import type { Workspace } from "../../src/domain/Workspace.ts"
import { Ext4Disks } from "../../src/layers/rootfs/Ext4Resize.ts"
import { create } from "../../src/programs/Create.ts"
import { expiredLive } from "../../src/programs/Gc.ts"
import { kill } from "../../src/programs/Halt.ts"
import { perfSteady } from "../../src/programs/Perf.ts"
import { resize, resizePlan } from "../../src/programs/Resize.ts"
import { start } from "../../src/programs/Start.ts"
import { stats } from "../../src/programs/Stats.ts"
import { StateStore } from "../../src/services/StateStore.ts"
import { fakeEnvironment } from "../support/fakeEnvironment.ts"

const failureTag = <A, E>(exit: Exit.Exit<A, E>) =>
  Exit.isFailure(exit) && exit.cause._tag === "Fail" ? (exit.cause.error as { _tag: string })._tag : undefined

/** A real ext4 file as the workspace's root disk (the fake backend keeps a directory). */
const ext4Root = (name: string, sizeMiB: number) =>
  Effect.gen(function*() {
    const store = yield* StateStore
    const ws = yield* store.get(name)
    const path = `${ws.rootfsPath}.ext4`
    // 20 MiB of content that cannot be sparse: what bounds a shrink.
    const content = `${ws.rootfsPath}.content`
    NodeFs.mkdirSync(content, { recursive: true })
    NodeFs.writeFileSync(`${content}/data`, randomBytes(20 * 1024 * 1024))
    NodeFs.writeFileSync(path, "")
    NodeFs.truncateSync(path, sizeMiB * 1024 * 1024)
    execFileSync("mke2fs", ["-q", "-F", "-t", "ext4", "-b", "4096", "-d", content, path], {
      env: { ...process.env, PATH: `${process.env.PATH}:/sbin:/usr/sbin` }
    })
    yield* store.update(name, (w) => ({ ...w, rootfsPath: path }) as Workspace)
    return path
  })

describe("stats, resize and leases (fake backend)", () => {
  it.scopedLive("stats samples a running workspace's VMM and refuses one that is not running", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "s1" })
      const before = yield* Effect.exit(stats("s1"))
      assert.strictEqual(failureTag(before), "Conflict")
      const running = yield* start("s1")
      const sample = yield* stats("s1", { interval: Duration.millis(50) })
      assert.strictEqual(sample.workspace, "s1")
      assert.strictEqual(sample.pid, (running.vm as { pid: number }).pid)
      assert.isAbove(sample.memoryBytes, 0)
      assert.isAtLeast(sample.cpuPercent, 0)
      assert.isAtLeast(sample.intervalMs, 50)
      assert.strictEqual(sample.disk.path, running.rootfsPath)
      const steady = yield* perfSteady("s1", {
        duration: Duration.millis(120),
        interval: Duration.millis(50)
      })
      assert.strictEqual(steady.summary.count, steady.samples.length)
      assert.isAtLeast(steady.samples.length, 1)
      assert.isAtMost(steady.samples.at(-1)!.atMs, 120, "no sample past the duration")
      assert.isFalse(steady.summary.stopped)
      assert.isAbove(steady.summary.minRssKiB!, 0)
      assert.strictEqual(steady.summary.growthKiB, steady.samples.at(-1)!.rssKiB - steady.samples[0]!.rssKiB)
      yield* kill("s1")
      assert.strictEqual(failureTag(yield* Effect.exit(stats("s1"))), "Conflict")
      assert.strictEqual(failureTag(yield* Effect.exit(perfSteady("s1"))), "Conflict")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("resize grows a stopped workspace's ext4 root disk, shrinks it to its content, no further", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "r1" })
      const disk = yield* ext4Root("r1", 64)
      const grown = yield* resize("r1", 128).pipe(Effect.provide(Ext4Disks))
      assert.strictEqual(grown.from_size_mib, 64)
      assert.strictEqual(grown.to_size_mib, 128)
      assert.strictEqual(NodeFs.statSync(disk).size, 128 * 1024 * 1024)
      assert.isAbove(grown.usage.sizeMiB, 120)
      assert.isAbove(grown.usage.fsUsedMiB, 20)
      assert.isAbove(grown.usage.fsFreeMiB, 0)
      const record = yield* Effect.flatMap(StateStore, (store) => store.get("r1"))
      assert.strictEqual(record.resources.sizeMiB, 128)
      const shrunk = yield* resize("r1", 100).pipe(Effect.provide(Ext4Disks))
      assert.strictEqual(NodeFs.statSync(disk).size, 100 * 1024 * 1024)
      assert.strictEqual(shrunk.usage.sizeMiB, 100)
      const tooSmall = yield* Effect.exit(resize("r1", 16).pipe(Effect.provide(Ext4Disks)))
      // 20 MiB of content does not fit in 16 MiB.
      assert.strictEqual(failureTag(tooSmall), "ResourceExhausted")
      assert.strictEqual(NodeFs.statSync(disk).size, 100 * 1024 * 1024, "a refused shrink leaves the file")
      assert.strictEqual(failureTag(yield* Effect.exit(resizePlan("r1", 10))), "InvalidInput")
      assert.strictEqual(failureTag(yield* Effect.exit(resizePlan("nope", 64))), "NotFound")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("resize refuses a running workspace (conflict) and a disk that is not a file (unsupported)", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "r2" })
      assert.strictEqual(failureTag(yield* Effect.exit(resizePlan("r2", 64))), "Unsupported")
      yield* ext4Root("r2", 32)
      yield* start("r2")
      assert.strictEqual(failureTag(yield* Effect.exit(resizePlan("r2", 64))), "Conflict")
      yield* kill("r2")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("a lease: create records expiresAt, gc finds it expired, start refuses it until renewed", () =>
    Effect.gen(function*() {
      const created = yield* create({ image: "alpine", name: "t1", ttlSeconds: 3600 })
      const lease = created.expiresAt
      assert.isDefined(lease)
      const ahead = DateTime.distance(created.createdAt, lease!)
      assert.strictEqual(ahead, 3600 * 1000)
      assert.isUndefined((yield* create({ image: "alpine", name: "t0", ttlSeconds: 0 })).expiresAt)
      assert.strictEqual(
        failureTag(yield* Effect.exit(create({ image: "alpine", name: "tx", ttlSeconds: -1 }))),
        "InvalidInput"
      )
      yield* start("t1")
      assert.deepStrictEqual((yield* expiredLive()).map((ws) => ws.name), [])
      // The lease runs out.
      const store = yield* StateStore
      const past = DateTime.subtractDuration(yield* DateTime.now, Duration.minutes(1))
      yield* store.update("t1", (ws) => ({ ...ws, expiresAt: past }) as Workspace)
      assert.deepStrictEqual((yield* expiredLive()).map((ws) => ws.name), ["t1"])
      yield* kill("t1")
      assert.deepStrictEqual(
        (yield* expiredLive()).map((ws) => ws.name),
        [],
        "only live workspaces are stopped"
      )
      assert.strictEqual(failureTag(yield* Effect.exit(start("t1"))), "Conflict")
      const renewed = yield* start("t1", { ttlSeconds: 600 })
      assert.isTrue(DateTime.greaterThan(renewed.expiresAt!, past))
      yield* kill("t1")
      const unleased = yield* start("t1", { ttlSeconds: 0 })
      assert.isUndefined(unleased.expiresAt)
      yield* kill("t1")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("start's one-start overrides are checked and leave the record's resources alone", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "o1", memoryMiB: 512, cpus: 2 })
      const running = yield* start("o1", { memoryMiB: 1024, cpus: 1 })
      assert.strictEqual(running.resources.memoryMiB, 512, "the record keeps its own resources")
      // What the VM was given, for a memory snapshot of it.
      assert.deepStrictEqual([running.launched?.memoryMiB, running.launched?.cpus], [1024, 1])
      yield* kill("o1")
      assert.strictEqual(failureTag(yield* Effect.exit(start("o1", { memoryMiB: 10 }))), "InvalidInput")
      assert.isUndefined((yield* start("o1")).launched, "a plain start runs with the record's resources")
      yield* kill("o1")
    }).pipe(Effect.provide(fakeEnvironment)))
})

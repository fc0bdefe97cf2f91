/**
 * Copy-on-write disks (programs/internal/DiskOverlay.ts) without a VM: which file is a workspace's
 * disk and in which format (never read from a disk's contents), what an overlay's header names, and
 * the sweep of bases no overlay names, and a disk swapped for one of the other format (a roll back) and
 * put back. The real tier boots overlays (test/e2e/snapshots.test.ts).
 */
import { afterAll, assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import * as ProcessesLive from "../../src/layers/process/ProcessesLive.ts"
import { pendingDiskPath, putBack, replaceDisk } from "../../src/programs/internal/DiskCopy.ts"
import { backingFileOf, basesDirOf, diskSizeOf, sweepBases } from "../../src/programs/internal/DiskOverlay.ts"
import { Home } from "../../src/services/Home.ts"
import { overlayFileOf, rootDiskOf } from "../../src/services/Hypervisor.ts"

const root = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-overlay-"))
afterAll(() => NodeFs.rmSync(root, { recursive: true, force: true }))

/** The first bytes of a qcow2 image: magic, version, the backing file's name and the virtual size. */
const qcow2Header = (backing: string | undefined, size: number) => {
  const name = Buffer.from(backing ?? "")
  const header = Buffer.alloc(512)
  header.writeUInt32BE(0x514649fb, 0)
  header.writeUInt32BE(3, 4)
  header.writeBigUInt64BE(backing === undefined ? 0n : 104n, 8)
  header.writeUInt32BE(name.length, 16)
  header.writeBigUInt64BE(BigInt(size), 24)
  name.copy(header, 104)
  return header
}

const workspaceDir = (name: string) => {
  const dir = NodePath.join(root, "workspaces", name)
  NodeFs.mkdirSync(dir, { recursive: true })
  return dir
}

describe("rootDiskOf", () => {
  it("is the raw disk, and the overlay only when no raw disk is there", () => {
    const dir = workspaceDir("a")
    const rootfs = NodePath.join(dir, "rootfs")
    NodeFs.writeFileSync(overlayFileOf(rootfs), qcow2Header("../../bases/1-2.ext4", 1 << 20))
    assert.deepStrictEqual(rootDiskOf(rootfs), { path: overlayFileOf(rootfs), format: "qcow2" })
    // A flatten renamed its raw disk into place and was cut off before removing the overlay.
    NodeFs.writeFileSync(rootfs, Buffer.alloc(4096))
    assert.deepStrictEqual(rootDiskOf(rootfs), { path: rootfs, format: "raw" })
  })

  it("never takes a raw disk for qcow2, whatever the guest wrote at its start", () => {
    const rootfs = NodePath.join(workspaceDir("b"), "rootfs")
    NodeFs.writeFileSync(rootfs, qcow2Header("/etc/shadow", 1 << 20))
    assert.deepStrictEqual(rootDiskOf(rootfs), { path: rootfs, format: "raw" })
    assert.strictEqual(diskSizeOf(rootfs), 512, "a raw disk's size is its length")
  })
})

describe("overlay headers", () => {
  it("reads the backing file's name and the virtual size, and nothing from other files", () => {
    const rootfs = NodePath.join(workspaceDir("c"), "rootfs")
    NodeFs.writeFileSync(overlayFileOf(rootfs), qcow2Header("../../bases/9-9.ext4", 300 << 20))
    assert.strictEqual(backingFileOf(overlayFileOf(rootfs)), "../../bases/9-9.ext4")
    assert.strictEqual(diskSizeOf(rootfs), 300 << 20)
    const plain = NodePath.join(root, "plain")
    NodeFs.writeFileSync(plain, "not an image")
    assert.isUndefined(backingFileOf(plain))
    assert.isUndefined(backingFileOf(NodePath.join(root, "missing")))
    const standalone = NodePath.join(root, "standalone.qcow2")
    NodeFs.writeFileSync(standalone, qcow2Header(undefined, 1 << 20))
    assert.isUndefined(backingFileOf(standalone))
  })
})

describe("sweepBases", () => {
  it.effect("removes the bases no overlay names and keeps the others", () =>
    Effect.gen(function*() {
      const home = yield* Home
      const bases = basesDirOf(home)
      NodeFs.mkdirSync(bases, { recursive: true })
      for (const base of ["1-1.ext4", "2-2.ext4", "3-3.ext4"]) {
        NodeFs.writeFileSync(NodePath.join(bases, base), "")
      }
      // One overlay in a workspace and one in a create's staging directory: both count.
      NodeFs.writeFileSync(
        overlayFileOf(NodePath.join(workspaceDir("d"), "rootfs")),
        qcow2Header("../../bases/1-1.ext4", 1 << 20)
      )
      NodeFs.writeFileSync(
        overlayFileOf(NodePath.join(workspaceDir(".staging-1-x"), "rootfs")),
        qcow2Header("../../bases/2-2.ext4", 1 << 20)
      )
      const removed = yield* sweepBases
      assert.deepStrictEqual(removed, [NodePath.join(bases, "3-3.ext4")])
      assert.deepStrictEqual(NodeFs.readdirSync(bases).sort(), ["1-1.ext4", "2-2.ext4"])
      assert.isFalse(NodeFs.existsSync(NodePath.join(bases, ".lock")), "the lock is let go")
      // A roll back's pending overlay and the previous overlay it keeps count too.
      NodeFs.writeFileSync(NodePath.join(bases, "4-4.ext4"), "")
      NodeFs.writeFileSync(NodePath.join(bases, "5-5.ext4"), "")
      const e = workspaceDir("e")
      NodeFs.writeFileSync(
        NodePath.join(e, ".rootfs.restore-one-123.qcow2"),
        qcow2Header("../../bases/4-4.ext4", 1 << 20)
      )
      NodeFs.writeFileSync(
        NodePath.join(e, ".rootfs.qcow2.previous-123"),
        qcow2Header("../../bases/5-5.ext4", 1 << 20)
      )
      // A raw disk is the guest's: whatever it holds names nothing.
      NodeFs.writeFileSync(NodePath.join(e, "rootfs"), qcow2Header("../../bases/3-3.ext4", 1 << 20))
      NodeFs.writeFileSync(NodePath.join(bases, "3-3.ext4"), "")
      assert.deepStrictEqual(yield* sweepBases, [NodePath.join(bases, "3-3.ext4")])
      NodeFs.rmSync(e, { recursive: true })
      assert.deepStrictEqual((yield* sweepBases).map((b) => NodePath.basename(b)).sort(), [
        "4-4.ext4",
        "5-5.ext4"
      ])
      // A lock left by a process that is gone is taken over.
      NodeFs.writeFileSync(NodePath.join(bases, ".lock"), "2147483646\n")
      NodeFs.rmSync(NodePath.join(root, "workspaces", "d"), { recursive: true })
      assert.deepStrictEqual(yield* sweepBases, [NodePath.join(bases, "1-1.ext4")])
    }).pipe(Effect.provide(Layer.merge(Home.layer(root), ProcessesLive.layer))))
})

describe("replaceDisk and putBack across formats", () => {
  const read = (path: string) => NodeFs.readFileSync(path, "utf8")

  it.effect("swap a raw disk for an overlay and back, and an overlay for a raw disk", () =>
    Effect.gen(function*() {
      const rootfs = NodePath.join(workspaceDir("f"), "rootfs")
      NodeFs.writeFileSync(rootfs, "raw disk")
      const pendingOverlay = `${pendingDiskPath(rootfs, "restore-one")}.qcow2`
      NodeFs.writeFileSync(pendingOverlay, "new overlay")
      const previous = yield* replaceDisk(pendingOverlay, rootfs, "qcow2")
      assert.deepStrictEqual(rootDiskOf(rootfs), { path: overlayFileOf(rootfs), format: "qcow2" })
      assert.strictEqual(read(overlayFileOf(rootfs)), "new overlay")
      assert.isFalse(NodeFs.existsSync(rootfs), "the raw disk's name is gone")
      assert.strictEqual(read(previous), "raw disk")
      // The start failed: the raw disk is the workspace's again, the overlay gone.
      yield* putBack(previous, rootfs)
      assert.deepStrictEqual(rootDiskOf(rootfs), { path: rootfs, format: "raw" })
      assert.strictEqual(read(rootfs), "raw disk")
      assert.isFalse(NodeFs.existsSync(overlayFileOf(rootfs)))
      assert.isFalse(NodeFs.existsSync(previous))

      // An overlay (a fork's child) swapped for a raw copy, kept, then put back.
      NodeFs.rmSync(rootfs)
      NodeFs.writeFileSync(overlayFileOf(rootfs), "child overlay")
      const pendingRaw = pendingDiskPath(rootfs, "restore-two")
      NodeFs.writeFileSync(pendingRaw, "raw copy")
      const kept = yield* replaceDisk(pendingRaw, rootfs, "raw")
      assert.strictEqual(NodePath.basename(kept), `.rootfs.qcow2.previous-${process.pid}`)
      assert.deepStrictEqual(rootDiskOf(rootfs), { path: rootfs, format: "raw" })
      assert.isFalse(NodeFs.existsSync(overlayFileOf(rootfs)), "the overlay's name is gone")
      yield* putBack(kept, rootfs)
      assert.deepStrictEqual(rootDiskOf(rootfs), { path: overlayFileOf(rootfs), format: "qcow2" })
      assert.strictEqual(read(overlayFileOf(rootfs)), "child overlay")
      assert.isFalse(NodeFs.existsSync(rootfs), "the raw replacement is gone")
    }))
})

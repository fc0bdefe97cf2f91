/**
 * The offline side of `cp` on a real ext4 image (mke2fs, e2fsck, debugfs; no VM, no root needed): a host
 * tree written in with modes, root ownership and symlinks, read back with stat, dump and rdump.
 */
import { Effect } from "effect"
import { spawnSync } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterEach, assert, describe, it } from "vitest"
import * as Debugfs from "../../src/layers/rootfs/Debugfs.ts"
import { walkHost } from "../../src/layers/rootfs/TarWriter.ts"
import { requireTool } from "../support/kernel.ts"

const dirs: Array<string> = []
const temp = () => {
  const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-debugfs-"))
  dirs.push(dir)
  return dir
}
afterEach(() => {
  for (const dir of dirs.splice(0)) NodeFs.rmSync(dir, { recursive: true, force: true })
})

const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)

const image = () => {
  const mke2fs = requireTool("mke2fs", "e2fsprogs")
  const dir = temp()
  const root = NodePath.join(dir, "root")
  NodeFs.mkdirSync(NodePath.join(root, "srv"), { recursive: true })
  NodeFs.writeFileSync(NodePath.join(root, "srv", "old"), "old")
  const path = NodePath.join(dir, "disk.ext4")
  const made = spawnSync(mke2fs, ["-q", "-F", "-t", "ext4", "-d", root, path, "32M"], { encoding: "utf8" })
  assert.strictEqual(made.status, 0, made.stderr)
  return { path, dir }
}

describe("Debugfs", () => {
  it("writes a host tree into the image and reads it back with modes and links", async () => {
    requireTool("debugfs", "e2fsprogs")
    requireTool("e2fsck", "e2fsprogs")
    const disk = image()
    const tree = NodePath.join(disk.dir, "tree")
    NodeFs.mkdirSync(NodePath.join(tree, "sub"), { recursive: true })
    NodeFs.writeFileSync(NodePath.join(tree, "sub", "a b.txt"), "spaces\n")
    NodeFs.chmodSync(NodePath.join(tree, "sub", "a b.txt"), 0o604)
    NodeFs.chmodSync(NodePath.join(tree, "sub"), 0o710)
    NodeFs.symlinkSync("sub/a b.txt", NodePath.join(tree, "link"))
    await run(Debugfs.fsck(disk.path))
    const lines = Debugfs.writeTreeScript(walkHost(tree, "top"), "/srv/tree", false)
    await run(Debugfs.writeBatch(disk.path, lines, disk.dir))
    assert.deepStrictEqual(await run(Debugfs.statPath(disk.path, "/srv/tree/sub")), {
      type: "directory",
      mode: 0o710,
      size: 1024
    })
    assert.deepStrictEqual(await run(Debugfs.statPath(disk.path, "/srv/tree/sub/a b.txt")), {
      type: "file",
      mode: 0o604,
      size: 7
    })
    assert.strictEqual((await run(Debugfs.statPath(disk.path, "/srv/tree/link")))?.type, "symlink")
    assert.isUndefined(await run(Debugfs.statPath(disk.path, "/srv/none")))
    const out = NodePath.join(disk.dir, "out")
    NodeFs.mkdirSync(out)
    await run(Debugfs.rdump(disk.path, "/srv/tree", out))
    assert.strictEqual(NodeFs.readFileSync(NodePath.join(out, "tree", "sub", "a b.txt"), "utf8"), "spaces\n")
    assert.strictEqual(NodeFs.readlinkSync(NodePath.join(out, "tree", "link")), "sub/a b.txt")
    // A file replaces what is there; the filesystem stays clean.
    const file = NodePath.join(disk.dir, "new")
    NodeFs.writeFileSync(file, "new")
    const replace = Debugfs.writeTreeScript(walkHost(file, "top"), "/srv/old", true)
    await run(Debugfs.writeBatch(disk.path, replace, disk.dir))
    await run(Debugfs.dumpFile(disk.path, "/srv/old", NodePath.join(disk.dir, "dumped")))
    assert.strictEqual(NodeFs.readFileSync(NodePath.join(disk.dir, "dumped"), "utf8"), "new")
    const check = spawnSync(requireTool("e2fsck", "e2fsprogs"), ["-fn", disk.path], { encoding: "utf8" })
    assert.strictEqual(check.status, 0, check.stdout)
  })

  it("reports what debugfs could not do", async () => {
    const disk = image()
    const result = await Effect.runPromise(
      Effect.either(Debugfs.writeBatch(disk.path, ['cd "/no/such"', 'mkdir "x"'], disk.dir))
    )
    assert.strictEqual(result._tag === "Left" && result.left._tag, "DebugfsFailed")
  })
})

/**
 * The host tar writer: what it writes reads back through the project's own tar reader and the safe
 * extractor with names, types, modes, contents and link targets intact, long and non-ASCII names
 * included; and GNU tar (the guest side's peer) reads it too.
 */
import { spawnSync } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterEach, assert, describe, it } from "vitest"
import { type TarEntry, TarReader } from "../../src/layers/rootfs/Tar.ts"
import { entryHeader, tarStream, walkHost } from "../../src/layers/rootfs/TarWriter.ts"

const dirs: Array<string> = []
const temp = () => {
  const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-tarw-"))
  dirs.push(dir)
  return dir
}
afterEach(() => {
  for (const dir of dirs.splice(0)) NodeFs.rmSync(dir, { recursive: true, force: true })
})

const collect = async (source: string, name: string) => {
  const chunks: Array<Uint8Array> = []
  for await (const chunk of tarStream(walkHost(source, name))) chunks.push(chunk)
  return Buffer.concat(chunks)
}

const read = (archive: Buffer) => {
  const entries: Array<TarEntry & { data: string }> = []
  let current: (TarEntry & { data: string }) | undefined
  const reader = new TarReader({
    entry: (entry) => {
      current = { ...entry, data: "" }
      entries.push(current)
    },
    data: (chunk) => {
      current!.data += chunk.toString("utf8")
    },
    end: () => {}
  })
  // Odd chunk sizes: the reader must not depend on block-aligned writes.
  for (let i = 0; i < archive.length; i += 777) reader.write(archive.subarray(i, i + 777))
  reader.finish()
  return entries
}

const longName = `${"d".repeat(90)}/${"e".repeat(90)}/${"f".repeat(120)}`

const makeTree = () => {
  const root = NodePath.join(temp(), "src")
  NodeFs.mkdirSync(NodePath.join(root, "sub"), { recursive: true })
  NodeFs.writeFileSync(NodePath.join(root, "a.txt"), "alpha\n")
  NodeFs.chmodSync(NodePath.join(root, "a.txt"), 0o640)
  NodeFs.writeFileSync(NodePath.join(root, "sub", "x.sh"), "#!/bin/sh\n")
  NodeFs.chmodSync(NodePath.join(root, "sub", "x.sh"), 0o4755)
  NodeFs.chmodSync(NodePath.join(root, "sub"), 0o750)
  NodeFs.symlinkSync("../a.txt", NodePath.join(root, "sub", "link"))
  NodeFs.symlinkSync(`/${"t".repeat(150)}`, NodePath.join(root, "longlink"))
  NodeFs.writeFileSync(NodePath.join(root, "ünïcødé"), "u")
  NodeFs.mkdirSync(NodePath.join(root, NodePath.dirname(longName)), { recursive: true })
  NodeFs.writeFileSync(NodePath.join(root, longName), "long")
  return root
}

describe("TarWriter", () => {
  it("round-trips names, types, modes, contents and link targets through the project's reader", async () => {
    const root = makeTree()
    const entries = read(await collect(root, "top"))
    const byPath = new Map(entries.map((e) => [e.path.replace(/\/$/, ""), e]))
    assert.strictEqual(byPath.get("top")!.type, "directory")
    assert.strictEqual(byPath.get("top/a.txt")!.mode & 0o7777, 0o640)
    assert.strictEqual(byPath.get("top/a.txt")!.data, "alpha\n")
    assert.strictEqual(byPath.get("top/sub")!.mode & 0o7777, 0o750)
    assert.strictEqual(byPath.get("top/sub/x.sh")!.mode & 0o7777, 0o4755)
    assert.strictEqual(byPath.get("top/sub/link")!.type, "symlink")
    assert.strictEqual(byPath.get("top/sub/link")!.linkname, "../a.txt")
    assert.strictEqual(byPath.get("top/longlink")!.linkname, `/${"t".repeat(150)}`)
    assert.strictEqual(byPath.get("top/ünïcødé")!.data, "u")
    assert.strictEqual(byPath.get(`top/${longName}`)!.data, "long")
    for (const entry of entries) {
      assert.strictEqual(entry.uid, 0)
      assert.strictEqual(entry.gid, 0)
    }
  })

  it("writes a single file as one entry under the given name, and skips FIFOs", async () => {
    const dir = temp()
    NodeFs.writeFileSync(NodePath.join(dir, "f"), "x".repeat(1500))
    const entries = read(await collect(NodePath.join(dir, "f"), "renamed"))
    assert.deepStrictEqual(entries.map((e) => [e.path, e.size, e.data.length]), [["renamed", 1500, 1500]])
    const fifoDir = NodePath.join(dir, "withfifo")
    NodeFs.mkdirSync(fifoDir)
    spawnSync("mkfifo", [NodePath.join(fifoDir, "pipe")])
    const tree = walkHost(fifoDir, "t")
    assert.deepStrictEqual(tree.entries.map((e) => e.name), ["t"])
    assert.deepStrictEqual(tree.skipped, [NodePath.join(fifoDir, "pipe")])
  })

  it("uses a pax size record beyond ustar's 8 GiB", () => {
    const header = entryHeader({
      name: "big",
      type: "file",
      source: "/dev/null",
      mode: 0o644,
      size: 9 * 1024 ** 3,
      mtime: 0,
      linkname: ""
    })
    assert.strictEqual(header.length, 512 * 3)
    assert.include(header.subarray(512, 1024).toString("latin1"), `size=${9 * 1024 ** 3}\n`)
  })

  it("is read by GNU tar with modes and symlinks kept", async () => {
    const root = makeTree()
    const archive = NodePath.join(temp(), "a.tar")
    NodeFs.writeFileSync(archive, await collect(root, "top"))
    const out = temp()
    const result = spawnSync("tar", ["-x", "-p", "-f", archive, "-C", out], { encoding: "utf8" })
    assert.strictEqual(result.status, 0, result.stderr)
    assert.strictEqual(NodeFs.statSync(NodePath.join(out, "top", "a.txt")).mode & 0o777, 0o640)
    assert.strictEqual(NodeFs.statSync(NodePath.join(out, "top", "sub")).mode & 0o777, 0o750)
    assert.strictEqual(NodeFs.readlinkSync(NodePath.join(out, "top", "sub", "link")), "../a.txt")
    assert.strictEqual(NodeFs.readFileSync(NodePath.join(out, "top", longName), "utf8"), "long")
    assert.strictEqual(NodeFs.readFileSync(NodePath.join(out, "top", "ünïcødé"), "utf8"), "u")
  })
})

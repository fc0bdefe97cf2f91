import { assert, describe, it } from "@effect/vitest"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { type TarEntry, TarReader } from "../../src/layers/rootfs/Tar.ts"
import { tarOf } from "../support/images.ts"

const read = (tar: Buffer, chunkSize = 7) => {
  const entries: Array<TarEntry & { content: string }> = []
  let current: (TarEntry & { content: string }) | undefined
  const reader = new TarReader({
    entry: (e) => {
      current = { ...e, content: "" }
      entries.push(current)
    },
    data: (chunk) => {
      current!.content += chunk.toString("utf8")
    },
    end: () => {}
  })
  for (let i = 0; i < tar.length; i += chunkSize) reader.write(tar.subarray(i, i + chunkSize))
  reader.finish()
  return entries
}

describe("tar reader", () => {
  it("reads ustar entries in arbitrary chunks, with pax names, link targets and xattrs", () => {
    const long = `${"d".repeat(120)}/${"f".repeat(150)}`
    const entries = read(tarOf([
      { path: "dir/", type: "dir", mode: 0o750, uid: 1000, gid: 100 },
      { path: "dir/file", content: "hello", mode: 0o4755 },
      { path: long, content: "long" },
      { path: "link", type: "symlink", linkname: "x".repeat(200) },
      { path: "hard", type: "hardlink", linkname: "dir/file" },
      { path: "dev", type: "char", devmajor: 1, devminor: 3 },
      { path: "attr", content: "", xattrs: { "security.capability": "\x01\x02" } }
    ]))
    assert.deepStrictEqual(entries.map((e) => [e.path, e.type]), [
      ["dir/", "directory"],
      ["dir/file", "file"],
      [long, "file"],
      ["link", "symlink"],
      ["hard", "hardlink"],
      ["dev", "char"],
      ["attr", "file"]
    ])
    assert.strictEqual(entries[0]!.uid, 1000)
    assert.strictEqual(entries[0]!.mode, 0o750)
    assert.strictEqual(entries[1]!.content, "hello")
    assert.strictEqual(entries[1]!.mode, 0o4755)
    assert.strictEqual(entries[2]!.content, "long")
    assert.strictEqual(entries[3]!.linkname, "x".repeat(200))
    assert.strictEqual(entries[5]!.devminor, 3)
    assert.deepStrictEqual([...entries[6]!.xattrs.get("security.capability")!], [1, 2])
  })

  it("reads GNU tar's long names and base-256 numbers", () => {
    const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-tar-"))
    const deep = NodePath.join(dir, "src", "a".repeat(90), "b".repeat(90))
    NodeFs.mkdirSync(deep, { recursive: true })
    NodeFs.writeFileSync(NodePath.join(deep, "file"), "gnu")
    const tar = NodeChild.execFileSync("tar", [
      "--format=gnu",
      "--owner=3000000",
      "--group=0",
      "-cf",
      "-",
      "-C",
      NodePath.join(dir, "src"),
      "."
    ])
    const entries = read(tar, 4096)
    const file = entries.find((e) => e.path.endsWith("/file"))!
    assert.strictEqual(file.content, "gnu")
    assert.strictEqual(file.uid, 3000000)
    assert.isTrue(file.path.length > 180)
    NodeFs.rmSync(dir, { recursive: true })
  })

  it("rejects corrupted headers and truncated streams", () => {
    const tar = tarOf([{ path: "file", content: "x".repeat(1000) }])
    const corrupt = Buffer.from(tar)
    corrupt[10] = corrupt[10]! ^ 0xff
    assert.throws(() => read(corrupt), /checksum/)
    assert.throws(() => read(tar.subarray(0, 700)), /truncated/)
  })
})

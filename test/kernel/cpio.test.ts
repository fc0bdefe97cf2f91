import { afterAll, assert, describe, it } from "@effect/vitest"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import * as NodeZlib from "node:zlib"
import { writeCpio } from "../../src/layers/kernel/internal/cpio.ts"
import { buildInitramfs } from "../../src/layers/kernel/internal/initramfs.ts"
import { cleanupTempDirs, tempDir } from "../support/kernel.ts"

const busybox = "/bin/busybox"
const requireBusybox = () => {
  if (!NodeFs.existsSync(busybox)) throw new Error("/bin/busybox is required: apt-get install busybox-static")
}

const withTemp = <A>(f: (dir: string) => A): A => f(tempDir("microagent-cpio-"))

/** busybox cpio's listing of an archive. */
const listing = (archive: Uint8Array) =>
  NodeChild.execFileSync(busybox, ["cpio", "-t"], { input: archive, stdio: ["pipe", "pipe", "pipe"] })
    .toString("utf8")
    .split("\n")
    .filter((l) => l.length > 0)

afterAll(cleanupTempDirs)

describe("cpio newc writer", () => {
  it("writes archives busybox cpio lists and extracts with the same names, data, modes and links", () => {
    requireBusybox()
    const odd = Buffer.from("x".repeat(1001)) // sizes that are not multiples of 4 exercise the padding
    const archive = writeCpio([
      { type: "directory", path: "dev" },
      { type: "directory", path: "lib" },
      { type: "directory", path: "lib/modules", mode: 0o700 },
      { type: "file", path: "init", mode: 0o755, data: Buffer.from("#!/bin/sh\n") },
      { type: "file", path: "lib/modules/a-b.ko", data: odd },
      { type: "file", path: "empty", data: new Uint8Array(0) },
      { type: "symlink", path: "lib/link", target: "modules/a-b.ko" }
    ])
    assert.strictEqual(archive.length % 4, 0)
    assert.deepStrictEqual(listing(archive), [
      "dev",
      "lib",
      "lib/modules",
      "init",
      "lib/modules/a-b.ko",
      "empty",
      "lib/link"
    ])
    withTemp((dir) => {
      NodeChild.execFileSync(busybox, ["cpio", "-i", "-d"], {
        cwd: dir,
        input: archive,
        stdio: ["pipe", "pipe", "pipe"]
      })
      assert.strictEqual(NodeFs.readFileSync(NodePath.join(dir, "init"), "utf8"), "#!/bin/sh\n")
      assert.strictEqual(NodeFs.statSync(NodePath.join(dir, "init")).mode & 0o777, 0o755)
      assert.strictEqual(NodeFs.statSync(NodePath.join(dir, "lib/modules")).mode & 0o777, 0o700)
      assert.deepStrictEqual(NodeFs.readFileSync(NodePath.join(dir, "lib/modules/a-b.ko")), odd)
      assert.strictEqual(NodeFs.statSync(NodePath.join(dir, "empty")).size, 0)
      assert.strictEqual(NodeFs.readlinkSync(NodePath.join(dir, "lib/link")), "modules/a-b.ko")
    })
  })

  it("is deterministic and ends with the trailer", () => {
    const entries = [{ type: "file" as const, path: "/init", data: Buffer.from("x") }]
    const a = Buffer.from(writeCpio(entries))
    assert.deepStrictEqual(a, Buffer.from(writeCpio(entries)))
    assert.strictEqual(a.subarray(0, 6).toString("latin1"), "070701")
    assert.include(a.toString("latin1"), "TRAILER!!!\0")
    // The leading slash is dropped: the kernel unpacks relative to the rootfs.
    assert.include(a.toString("latin1"), "init\0")
    assert.notInclude(a.toString("latin1"), "/init")
  })

  it("refuses paths that climb out of the archive", () => {
    assert.throws(() => writeCpio([{ type: "directory", path: "../etc" }]), /bad cpio path/)
    assert.throws(() => writeCpio([{ type: "directory", path: "/" }]), /bad cpio path/)
  })

  it("lays out the initramfs the agent expects, gzip -1 or plain", () => {
    requireBusybox()
    const input = {
      agent: Buffer.from("agent"),
      modules: [
        { name: "virtio_ring", data: Buffer.from("r") },
        { name: "virtio", data: Buffer.from("v"), loadClass: "boot" as const },
        { name: "virtio_net", data: Buffer.from("n"), loadClass: "net" as const }
      ]
    }
    const plain = buildInitramfs({ ...input, compression: "none" })
    const gzipped = buildInitramfs({ ...input, compression: "gzip" })
    assert.deepStrictEqual(Buffer.from(NodeZlib.gunzipSync(gzipped)), Buffer.from(plain))
    assert.deepStrictEqual(listing(plain), [
      "dev",
      "proc",
      "sys",
      "newroot",
      "lib",
      "lib/modules",
      "init",
      "lib/modules/virtio_ring.ko",
      "lib/modules/virtio.ko",
      "lib/modules/virtio_net.ko",
      "lib/modules/load.list"
    ])
    withTemp((dir) => {
      NodeChild.execFileSync(busybox, ["cpio", "-i", "-d"], {
        cwd: dir,
        input: plain,
        stdio: ["pipe", "pipe", "pipe"]
      })
      assert.strictEqual(
        NodeFs.readFileSync(NodePath.join(dir, "lib/modules/load.list"), "utf8"),
        "virtio_ring.ko\nvirtio.ko\nvirtio_net.ko net\n"
      )
      assert.strictEqual(NodeFs.statSync(NodePath.join(dir, "init")).mode & 0o777, 0o755)
    })
  })
})

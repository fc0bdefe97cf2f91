/**
 * Hostile layers, one per escape technique: each is refused (or, for absolute symlinks, contained in
 * the root) and nothing is written outside the build's stage. Runs the real builder on real tar streams.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, beforeAll } from "vitest"
import { build } from "../../src/layers/rootfs/RootfsBuilderLive.ts"
import { compress, tarOf, type TarSpec } from "../support/images.ts"

let scratch: string
let outside: string

beforeAll(() => {
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-layer-safety-"))
  outside = NodePath.join(scratch, "outside")
  NodeFs.mkdirSync(outside)
  NodeFs.writeFileSync(NodePath.join(outside, "victim"), "untouched")
})

afterAll(() => {
  NodeFs.rmSync(scratch, { recursive: true, force: true })
})

/** Every path under a directory, with file contents, for before/after comparison. */
const snapshot = (dir: string): Record<string, string> => {
  const out: Record<string, string> = {}
  const walk = (path: string) => {
    for (const name of NodeFs.readdirSync(path)) {
      const full = NodePath.join(path, name)
      const st = NodeFs.lstatSync(full)
      if (st.isDirectory()) {
        out[full] = "dir"
        walk(full)
      } else if (st.isSymbolicLink()) out[full] = `link:${NodeFs.readlinkSync(full)}`
      else out[full] = NodeFs.readFileSync(full, "utf8")
    }
  }
  walk(dir)
  return out
}

/** Device nodes, FIFOs and sockets anywhere under a directory. */
const specialFiles = (dir: string): Array<string> =>
  NodeFs.readdirSync(dir, { recursive: true, encoding: "utf8" }).filter((rel) => {
    const st = NodeFs.lstatSync(NodePath.join(dir, rel))
    return st.isCharacterDevice() || st.isBlockDevice() || st.isFIFO() || st.isSocket()
  })

let counter = 0
const writeLayers = (layers: ReadonlyArray<ReadonlyArray<TarSpec>>) =>
  layers.map((entries, i) => {
    const file = NodePath.join(scratch, "blobs", `layer-${++counter}-${i}.tar.gz`)
    NodeFs.mkdirSync(NodePath.dirname(file), { recursive: true })
    NodeFs.writeFileSync(file, compress(tarOf(entries), "gzip"))
    return { digest: `sha256:test-${counter}-${i}`, blob: Effect.succeed(file) }
  })

const tmp = () => NodePath.join(scratch, "home", "tmp")

const buildLayers = (
  layers: ReadonlyArray<ReadonlyArray<TarSpec>>,
  options: { refuseDevices?: boolean } = {}
) => {
  const output = NodePath.join(scratch, `out-${++counter}.ext4`)
  return build(tmp(), {
    layers: writeLayers(layers),
    output,
    refuseDevices: options.refuseDevices
  }).pipe(Effect.map((result) => ({ result, output })))
}

/** Builds, expects a refusal naming `reason`, and checks nothing outside the stage changed. */
const expectRefused = (
  layers: ReadonlyArray<ReadonlyArray<TarSpec>>,
  reason: RegExp,
  options: { refuseDevices?: boolean } = {}
) =>
  Effect.gen(function*() {
    const before = snapshot(scratch)
    const error = yield* buildLayers(layers, options).pipe(Effect.flip)
    assert.strictEqual(error._tag, "PolicyDenied", error.message)
    assert.match(error.message, reason)
    const after = snapshot(scratch)
    // The only change allowed is the (now empty) tmp dir and the blobs this test wrote.
    for (const key of Object.keys(after)) {
      if (
        key.startsWith(NodePath.join(scratch, "blobs")) || key === tmp()
        || key === NodePath.join(scratch, "home")
      ) continue
      assert.strictEqual(after[key], before[key], `${key} changed`)
    }
    assert.deepStrictEqual(NodeFs.readdirSync(tmp()), [], "the work directory was removed")
    assert.strictEqual(NodeFs.readFileSync(NodePath.join(outside, "victim"), "utf8"), "untouched")
  })

describe("hostile layers", () => {
  it.effect("refuses `..` in an entry name", () =>
    expectRefused([[{ path: "../escaped", content: "x" }]], /\.\./))

  it.effect("refuses `..` hidden inside a path", () =>
    expectRefused([[{ path: "etc/", type: "dir" }, { path: "etc/../../escaped", content: "x" }]], /\.\./))

  it.effect("refuses absolute entry names", () =>
    expectRefused([[{ path: `${outside}/victim`, content: "overwritten" }]], /absolute/))

  it.effect("refuses writing through a symlink that climbs out of the root", () =>
    expectRefused(
      [[{ path: "up", type: "symlink", linkname: "../../../../../../../.." }, {
        path: `up${outside}/victim`,
        content: "overwritten"
      }]],
      /outside the root/
    ))

  it.effect("refuses writing through such a symlink planted by an earlier layer", () =>
    expectRefused(
      [[{ path: "lib", type: "symlink", linkname: `../../../../../../../..${outside}` }], [{
        path: "lib/victim",
        content: "overwritten"
      }]],
      /outside the root/
    ))

  it.effect("refuses hard links to `..` targets", () =>
    expectRefused([[{ path: "passwd", type: "hardlink", linkname: "../../../../etc/passwd" }]], /\.\./))

  it.effect("refuses hard links to absolute targets", () =>
    expectRefused([[{ path: "victim", type: "hardlink", linkname: `${outside}/victim` }]], /absolute/))

  it.effect("refuses hard links through a symlink that leads outside", () =>
    expectRefused(
      [[{ path: "door", type: "symlink", linkname: `../../../../../../../..${outside}` }, {
        path: "victim",
        type: "hardlink",
        linkname: "door/victim"
      }]],
      /outside the root/
    ))

  it.effect("refuses hard links to files that are not in the image", () =>
    expectRefused([[{ path: "x", type: "hardlink", linkname: "not/there" }]], /does not exist/))

  it.effect("refuses device nodes with --refuse-devices, naming the entry", () =>
    expectRefused(
      [[{ path: "dev/", type: "dir" }, {
        path: "dev/sda",
        type: "block",
        devmajor: 8,
        devminor: 0
      }]],
      /"dev\/sda" is a block device \(8:0\).*--refuse-devices/,
      { refuseDevices: true }
    ))

  it.effect("refuses whiteouts that escape", () =>
    expectRefused([[{ path: "up", type: "symlink", linkname: "../../../../../../../.." }, {
      path: `up${outside}/.wh.victim`,
      content: ""
    }]], /outside the root/))

  it.effect("refuses symlink loops", () =>
    expectRefused([[{ path: "a", type: "symlink", linkname: "b" }, {
      path: "b",
      type: "symlink",
      linkname: "a"
    }, {
      path: "a/file",
      content: "x"
    }]], /too many levels/))

  it.effect("keeps absolute symlinks inside the root: writes through them land in the image", () =>
    Effect.gen(function*() {
      const { output } = yield* buildLayers([[{ path: "etc/", type: "dir" }, {
        path: "conf",
        type: "symlink",
        linkname: "/etc"
      }], [{ path: "conf/written", content: "inside" }]])
      assert.strictEqual(NodeFs.readFileSync(NodePath.join(outside, "victim"), "utf8"), "untouched")
      const content = NodeChild.execFileSync("debugfs", ["-R", "cat /etc/written", output], {
        encoding: "utf8",
        stdio: "pipe"
      })
      assert.strictEqual(content, "inside")
    }))

  it.effect("creates device nodes and FIFOs by default, inside the image only", () =>
    Effect.gen(function*() {
      const { output } = yield* buildLayers([[
        { path: "dev/", type: "dir" },
        { path: "dev/null", type: "char", devmajor: 1, devminor: 3, mode: 0o666 },
        { path: "dev/vda", type: "block", devmajor: 254, devminor: 0, mode: 0o660, gid: 6 },
        { path: "dev/pipe", type: "fifo", mode: 0o600, uid: 7 }
      ]])
      const stat = (path: string) =>
        NodeChild.execFileSync("debugfs", ["-R", `stat ${path}`, output], { encoding: "utf8", stdio: "pipe" })
      assert.match(stat("/dev/null"), /Type: character special\s+Mode:\s+0666/)
      assert.match(stat("/dev/null"), /Device major\/minor number: 01:03/)
      assert.match(stat("/dev/vda"), /Type: block special\s+Mode:\s+0660/)
      assert.match(stat("/dev/vda"), /Group:\s+6/)
      assert.match(stat("/dev/pipe"), /Type: FIFO\s+Mode:\s+0600/)
      assert.match(stat("/dev/pipe"), /User:\s+7/)
      // Nothing but the image itself was made on the host: no device node or FIFO anywhere in scratch.
      assert.deepStrictEqual(specialFiles(scratch), [])
    }))
})

/**
 * The pure parts of `commit`: debugfs output parsers, which entries a commit holds (runtime paths,
 * lost+found), the `--diff` plan with its whiteouts, hard links as tar links, and byte-identical layers
 * for identical trees. One test reads a real ext4 image (mkfs.ext4 -d, debugfs) end to end.
 */
import { Effect } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, describe, it } from "vitest"
import { layerTar, specialBitsIn, writeLayer } from "../../src/layers/image/CommitLayer.ts"
import {
  type Ext4Entry,
  parseLsP,
  parseStat,
  readExt4Tree,
  splitBatch
} from "../../src/layers/rootfs/Ext4Tree.ts"
import {
  createdOf,
  diffTree,
  layerEntries,
  type Planned,
  planTree,
  restoreSpecialBits,
  runtimePaths
} from "../../src/programs/internal/CommitPlan.ts"

const scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-commit-layer-"))
afterAll(() => NodeFs.rmSync(scratch, { recursive: true, force: true }))

let inode = 100
const entry = (path: string, fields: Partial<Ext4Entry> = {}): Ext4Entry => ({
  path,
  ino: inode++,
  type: "file",
  mode: 0o644,
  uid: 0,
  gid: 0,
  size: 0,
  mtime: 1_700_000_000,
  ctime: "1700000000:0",
  linkTarget: "",
  devMajor: 0,
  devMinor: 0,
  xattrs: [],
  ...fields
})
const dir = (path: string, fields: Partial<Ext4Entry> = {}) =>
  entry(path, { type: "directory", mode: 0o755, ...fields })
const paths = (planned: ReadonlyArray<Planned>) => planned.map((p) => p.entry.path)
const noRuntime = { files: [], mountPoints: [] }

describe("debugfs output", () => {
  it("parses ls -p lines, skipping . and .., unused slots, and keeping odd names", () => {
    const listed = parseLsP(
      [
        "/12/040755/0/0/.//",
        "/2/040755/0/0/..//",
        "/13/104755/1000/0/f/6/",
        "/0/000000/0/0/gone/0/",
        "/17/040755/0/0/sub//",
        "/18/020000/0/0/a/b/0/"
      ].join("\n")
    )
    assert.deepStrictEqual(listed.map((e) => [e.ino, e.mode, e.uid, e.name, e.size]), [
      [13, 0o104755, 1000, "f", 6],
      [17, 0o040755, 0, "sub", 0],
      [18, 0o020000, 0, "a/b", 0]
    ])
    assert.throws(() => parseLsP("garbage"))
  })

  it("parses stat: times, devices, fast link targets and xattr names (not inline data)", () => {
    const info = parseStat(
      [
        "Inode: 13   Type: symlink    Mode:  0777   Flags: 0x0",
        " ctime: 0x6b13295d:0000000a -- Fri Dec  4 20:58:05 2026",
        " mtime: 0x6b13295c:00000000 -- Fri Dec  4 20:58:04 2026",
        "Extended attributes:",
        '  user.foo (3) = "bar"',
        "  system.data (0)",
        "  security.x (3) = 61 0a 62 ",
        "Device major/minor number: 08:01 (hex 08:01)",
        'Fast link dest: "a "quoted" target"'
      ].join("\n"),
      17
    )
    assert.deepStrictEqual(info, {
      mtime: 0x6b13295c,
      ctime: `${0x6b13295d}:10`,
      devMajor: 8,
      devMinor: 1,
      fastLink: 'a "quoted" target',
      xattrNames: ["security.x", "user.foo"]
    })
  })

  it("splits a batch's output by the echoed commands, and fails on a missing one", () => {
    const out = "debugfs: stat <2>\nA\nB\ndebugfs: stat <3>\ndebugfs: stat <4>\nC\n"
    assert.deepStrictEqual(splitBatch(out, 3), ["A\nB\n", "", "C\n"])
    assert.throws(() => splitBatch(out, 2))
  })
})

describe("what a commit holds", () => {
  it("leaves out lost+found, the root, runtime-written files and mount points the base lacks", () => {
    const workspace = [
      dir("/"),
      dir("/lost+found"),
      dir("/etc"),
      entry("/etc/hosts"),
      entry("/etc/resolv.conf"),
      entry("/etc/passwd"),
      entry("/etc/app.conf"),
      dir("/proc"),
      dir("/data"),
      entry("/data/stray"),
      dir("/srv")
    ]
    const originalHosts = entry("/etc/hosts", { size: 9 })
    const base = [dir("/"), dir("/etc"), originalHosts, entry("/etc/passwd"), dir("/proc")]
    const runtime = runtimePaths({ files: [{ target: "etc/app.conf" }], mounts: [{ target: "/data/" }] })
    const planned = planTree(workspace, base, runtime)
    assert.deepStrictEqual(paths(planned), ["/etc", "/etc/hosts", "/etc/passwd", "/proc", "/srv"])
    const hosts = planned.find((p) => p.entry.path === "/etc/hosts")!
    assert.strictEqual(hosts.origin, "base")
    assert.strictEqual(hosts.entry, originalHosts, "the base's version, not the one the agent wrote")
  })

  it("without a base, drops every runtime path", () => {
    const planned = planTree(
      [dir("/"), dir("/dev"), dir("/etc"), entry("/etc/hosts"), entry("/x")],
      undefined,
      runtimePaths({ files: [], mounts: [] })
    )
    assert.deepStrictEqual(paths(planned), ["/etc", "/x"])
  })

  it("takes the created time from the newest mtime, never the clock", () => {
    const planned = planTree(
      [dir("/"), entry("/a", { mtime: 10 }), entry("/b", { mtime: 20 })],
      undefined,
      noRuntime
    )
    assert.strictEqual(createdOf(planned, 0), "1970-01-01T00:00:20.000Z")
  })
})

describe("--diff", () => {
  it("lists changed entries and whiteouts for deletions (a deleted directory once)", () => {
    const same = entry("/etc/passwd")
    const touched = entry("/etc/group", { size: 3 })
    const base = [
      dir("/"),
      dir("/etc", { mtime: 1 }),
      same,
      touched,
      entry("/etc/hostname"),
      dir("/old"),
      entry("/old/a"),
      dir("/usr"),
      entry("/usr/x")
    ]
    const workspace = [
      dir("/", { ino: base[0]!.ino }),
      dir("/etc", { mtime: 2 }),
      { ...same },
      { ...touched, ctime: "1800000000:0" },
      entry("/etc/new"),
      { ...base[7]! },
      { ...base[8]! }
    ]
    const planned = planTree(workspace, base, noRuntime)
    const plan = diffTree(planned, base, (path) => path !== "/etc/group")
    assert.deepStrictEqual(paths(plan.changed), ["/etc", "/etc/group", "/etc/new"])
    assert.deepStrictEqual(plan.deleted, ["/etc/hostname", "/old"])
    const names = layerEntries(plan.changed, plan.deleted).map((i) => i.entry.name)
    assert.deepStrictEqual(
      names,
      ["etc", "etc/.wh.hostname", "etc/group", "etc/new", ".wh.old"].sort((a, b) =>
        Buffer.compare(Buffer.from(a), Buffer.from(b))
      )
    )
  })

  it("takes a hard-link group whole when one of its names is new", () => {
    const file = entry("/a", { size: 1 })
    const base = [dir("/"), file]
    const workspace = [dir("/"), { ...file, ctime: "1800000000:0" }, {
      ...file,
      path: "/b",
      ctime: "1800000000:0"
    }]
    const plan = diffTree(planTree(workspace, base, noRuntime), base, () => true)
    assert.deepStrictEqual(paths(plan.changed), ["/a", "/b"])
    const items = layerEntries(plan.changed)
    assert.deepStrictEqual(items.map((i) => [i.entry.name, i.entry.type, i.entry.linkname]), [
      ["a", "file", ""],
      ["b", "hardlink", "a"]
    ])
  })
})

describe("setuid bits the store stripped", () => {
  it("come back from the base's layers for files the workspace left untouched", async () => {
    const su = entry("/usr/bin/su", { mode: 0o755 })
    const passwd = entry("/usr/bin/passwd", { mode: 0o755 })
    const layer = (n: number, items: ReadonlyArray<Ext4Entry>) =>
      writeLayer(
        layerTar(
          layerEntries(items.map((e) => ({ entry: { ...e, size: 0 }, origin: "workspace" as const }))),
          {
            workspace: { entries: [], dataFile: () => "/dev/null" }
          }
        ),
        NodePath.join(scratch, `base-${n}.tar.gz`),
        items.length
      )
    await layer(1, [{ ...su, mode: 0o4755 }, { ...passwd, mode: 0o2755 }])
    await layer(2, [{ ...passwd, mode: 0o4755 }])
    const bits = await specialBitsIn(
      [NodePath.join(scratch, "base-1.tar.gz"), NodePath.join(scratch, "base-2.tar.gz")],
      new Set(["/usr/bin/su", "/usr/bin/passwd"])
    )
    assert.deepStrictEqual([...bits].sort(), [["/usr/bin/passwd", 0o4000], ["/usr/bin/su", 0o4000]])
    const base = [su, passwd]
    // passwd was chmodded in the workspace (its inode changed): it keeps the workspace's mode.
    const planned = [{ entry: su, origin: "workspace" as const }, {
      entry: { ...passwd, ctime: "1800000000:0" },
      origin: "workspace" as const
    }]
    const restored = restoreSpecialBits(planned, base, bits)
    assert.deepStrictEqual(restored.map((p) => [p.entry.path, p.entry.mode]), [
      ["/usr/bin/su", 0o4755],
      ["/usr/bin/passwd", 0o755]
    ])
  })
})

describe("layer bytes", () => {
  const tree = () => {
    const root = NodePath.join(scratch, "tree")
    NodeFs.mkdirSync(NodePath.join(root, "d"), { recursive: true })
    NodeFs.writeFileSync(NodePath.join(root, "d", "f"), "hello\n")
    NodeFs.linkSync(NodePath.join(root, "d", "f"), NodePath.join(root, "d", "hl"))
    NodeFs.symlinkSync("f", NodePath.join(root, "d", "sl"))
    NodeFs.mkdirSync(NodePath.join(root, "lost+found"))
    const image = NodePath.join(scratch, "tree.ext4")
    NodeChild.execFileSync("mkfs.ext4", ["-q", "-F", "-d", root, image, "8M"], { stdio: "ignore" })
    NodeChild.execFileSync("debugfs", ["-w", "-f", "-", image], {
      input: [
        "sif /d/f uid 1000",
        "sif /d/f gid 1000",
        "sif /d/f mode 0104755",
        "ea_set /d/f user.origin committed",
        "cd /d",
        "mknod null c 1 3",
        "mknod pipe p"
      ].join("\n"),
      stdio: ["pipe", "ignore", "ignore"]
    })
    return image
  }

  it("reads a real ext4 image and writes the same layer twice, byte for byte", async () => {
    const image = tree()
    const read = (n: number) => Effect.runPromise(readExt4Tree(image, NodePath.join(scratch, `work-${n}`)))
    const first = await read(1)
    const byPath = new Map(first.entries.map((e) => [e.path, e]))
    const f = byPath.get("/d/f")!
    assert.deepStrictEqual([f.type, f.mode, f.uid, f.gid, f.size], ["file", 0o4755, 1000, 1000, 6])
    assert.deepStrictEqual(f.xattrs.map((x) => [x.name, Buffer.from(x.value).toString()]), [[
      "user.origin",
      "committed"
    ]])
    assert.strictEqual(byPath.get("/d/hl")!.ino, f.ino)
    assert.strictEqual(byPath.get("/d/sl")!.linkTarget, "f")
    assert.deepStrictEqual([
      byPath.get("/d/null")!.type,
      byPath.get("/d/null")!.devMajor,
      byPath.get("/d/null")!.devMinor
    ], ["char", 1, 3])
    assert.strictEqual(byPath.get("/d/pipe")!.type, "fifo")
    assert.strictEqual(NodeFs.readFileSync(first.dataFile(f.ino), "utf8"), "hello\n")

    const write = async (n: number) => {
      const tree = n === 1 ? first : await read(n)
      const items = layerEntries(planTree(tree.entries, undefined, noRuntime))
      return writeLayer(
        layerTar(items, { workspace: tree }),
        NodePath.join(scratch, `layer-${n}.tar.gz`),
        items.length
      )
    }
    const [a, b] = [await write(1), await write(2)]
    assert.deepStrictEqual(a, b)
    assert.deepStrictEqual(
      NodeFs.readFileSync(NodePath.join(scratch, "layer-1.tar.gz")),
      NodeFs.readFileSync(NodePath.join(scratch, "layer-2.tar.gz"))
    )
    const listing = NodeChild.execFileSync("tar", [
      "--numeric-owner",
      "-tvzf",
      NodePath.join(scratch, "layer-1.tar.gz")
    ], {
      encoding: "utf8"
    })
    assert.match(listing, /^-rwsr-xr-x 1000\/1000\s+6 .* d\/f$/m)
    assert.match(listing, /^hrwsr-xr-x 1000\/1000\s+0 .* d\/hl link to d\/f$/m)
    assert.match(listing, /^c\S+ 0\/0\s+1,3 .* d\/null$/m)
    assert.match(listing, /^p\S+ 0\/0\s+0 .* d\/pipe$/m)
    assert.match(listing, /^lrwxrwxrwx 0\/0\s+0 .* d\/sl -> f$/m)
    assert.notMatch(listing, /lost\+found/)
    const raw = NodeChild.execFileSync("gzip", ["-dc", NodePath.join(scratch, "layer-1.tar.gz")])
    assert.isTrue(raw.includes("SCHILY.xattr.user.origin=committed\n"))
  }, 60_000)
})

/**
 * File transfer and artifacts on real QEMU microVMs, through the CLI: `cp` both ways on a running
 * workspace (over the guest channel) and on a halted one (offline, debugfs), trees with modes, nested
 * directories and symlinks, hostile targets, and declared outputs collected by `run`.
 */
import { createHash, randomBytes } from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { cliAsync, type CliResult, errorOf, stopRuntime } from "../support/cli.ts"
import { hostArchitecture, minbaseTarball, pushBusyboxImage, pushSpec } from "../support/images.ts"
import { qemuProcessesMentioning } from "../support/kernel.ts"
import { requireTool, startRegistry, type TestRegistry } from "../support/registry.ts"
import { tarArchive, tarFile, tarHeader } from "../support/tar.ts"

let registry: TestRegistry
let stateDir: string
let scratch: string
let busybox: string

const ma = (args: ReadonlyArray<string>): Promise<CliResult> =>
  cliAsync(args, { stateDir, env: { MICROAGENT_BACKEND: "qemu" } })

const ok = async (args: ReadonlyArray<string>) => {
  const result = await ma(args)
  assert.strictEqual(result.code, 0, `${args.join(" ")}: ${result.stderr}`)
  assert.notInclude(result.stderr, "internal error")
  return result.stdout.length > 0 ? JSON.parse(result.stdout) : undefined
}

const guestSh = async (workspace: string, script: string) =>
  (await ok(["exec", workspace, "--", "sh", "-c", script])).result.stdout as string

/** QEMU processes whose command line mentions this test's state directory. */
const qemuProcesses = (): Array<number> => qemuProcessesMentioning(stateDir)

const mode = (path: string) => NodeFs.lstatSync(path).mode & 0o7777
const sha = (path: string) => createHash("sha256").update(NodeFs.readFileSync(path)).digest("hex")

/** A host tree: nested directories, modes, a relative and an absolute symlink, an executable. */
const makeTree = (root: string) => {
  NodeFs.mkdirSync(NodePath.join(root, "sub", "deeper"), { recursive: true })
  NodeFs.writeFileSync(NodePath.join(root, "top.txt"), "top\n")
  NodeFs.writeFileSync(NodePath.join(root, "sub", "run.sh"), "#!/bin/sh\necho ran\n")
  NodeFs.writeFileSync(NodePath.join(root, "sub", "deeper", "secret"), "deep\n")
  NodeFs.chmodSync(NodePath.join(root, "top.txt"), 0o640)
  NodeFs.chmodSync(NodePath.join(root, "sub", "run.sh"), 0o755)
  NodeFs.chmodSync(NodePath.join(root, "sub", "deeper", "secret"), 0o600)
  NodeFs.chmodSync(NodePath.join(root, "sub", "deeper"), 0o750)
  NodeFs.symlinkSync("../top.txt", NodePath.join(root, "sub", "link"))
  NodeFs.symlinkSync("/etc/passwd", NodePath.join(root, "abs-link"))
}

/** Compares two host trees: names, types, modes, contents, link targets. */
const assertSameTree = (expected: string, actual: string) => {
  const walk = (root: string, rel = ""): Array<string> =>
    NodeFs.readdirSync(NodePath.join(root, rel)).sort().flatMap((name) => {
      const path = NodePath.join(rel, name)
      const st = NodeFs.lstatSync(NodePath.join(root, path))
      const line = st.isSymbolicLink()
        ? `${path} -> ${NodeFs.readlinkSync(NodePath.join(root, path))}`
        : st.isDirectory()
        ? `${path}/ ${(st.mode & 0o7777).toString(8)}`
        : `${path} ${(st.mode & 0o7777).toString(8)} ${sha(NodePath.join(root, path))}`
      return st.isDirectory() ? [line, ...walk(root, path)] : [line]
    })
  assert.deepStrictEqual(walk(actual), walk(expected))
  assert.strictEqual((mode(actual) & 0o777).toString(8), (mode(expected) & 0o777).toString(8))
}

beforeAll(async () => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("debugfs", "e2fsprogs")
  requireTool("e2fsck", "e2fsprogs")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-files-"))
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-files-scratch-"))
  registry = await startRegistry()
  busybox = pushBusyboxImage(registry, scratch).ref
  assert.strictEqual((await ma(["image", "pull", busybox])).code, 0)
  await ok(["create", "--image", busybox, "files"])
  await ok(["start", "files"])
}, 600_000)

afterAll(async () => {
  await ma(["delete", "--force", "files"])
  stopRuntime(stateDir)
  for (const pid of qemuProcesses()) process.kill(pid, "SIGKILL")
  await registry?.stop()
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
  NodeFs.rmSync(scratch, { recursive: true, force: true })
})

describe("cp on a running workspace", () => {
  it("copies a file in and out with its content and mode", async () => {
    const source = NodePath.join(scratch, "hello.sh")
    NodeFs.writeFileSync(source, "#!/bin/sh\necho hello\n")
    NodeFs.chmodSync(source, 0o751)
    const copied = await ok(["cp", source, "files:/root/hello.sh"])
    assert.strictEqual(copied.via, "channel")
    assert.strictEqual(
      await guestSh("files", "stat -c '%a %s' /root/hello.sh; /root/hello.sh"),
      "751 21\nhello\n"
    )
    // Into a guest directory: keeps the basename.
    await ok(["cp", source, "files:/tmp"])
    assert.strictEqual(await guestSh("files", "cat /tmp/hello.sh"), "#!/bin/sh\necho hello\n")
    // Out, to a host directory: keeps the basename; and to a named file.
    await guestSh("files", "printf 'from the guest' > /root/out.txt; chmod 604 /root/out.txt")
    const outDir = NodeFs.mkdtempSync(NodePath.join(scratch, "out-"))
    await ok(["cp", "files:/root/out.txt", outDir])
    assert.strictEqual(NodeFs.readFileSync(NodePath.join(outDir, "out.txt"), "utf8"), "from the guest")
    assert.strictEqual(mode(NodePath.join(outDir, "out.txt")), 0o604)
    await ok(["cp", "files:/root/out.txt", NodePath.join(outDir, "renamed")])
    assert.strictEqual(NodeFs.readFileSync(NodePath.join(outDir, "renamed"), "utf8"), "from the guest")
  })

  it("round-trips a 10 MiB binary file intact", async () => {
    const source = NodePath.join(scratch, "blob.bin")
    NodeFs.writeFileSync(source, randomBytes(10 * 1024 * 1024))
    await ok(["cp", source, "files:/root/blob.bin"])
    const guestSum = await guestSh("files", "sha256sum /root/blob.bin")
    assert.strictEqual(guestSum.split(" ")[0], sha(source))
    const back = NodePath.join(scratch, "blob.back")
    await ok(["cp", "files:/root/blob.bin", back])
    assert.strictEqual(sha(back), sha(source))
  })

  it("copies a directory tree in and out: nested directories, modes, symlinks", async () => {
    const tree = NodePath.join(scratch, "tree")
    makeTree(tree)
    NodeFs.chmodSync(tree, 0o711)
    await guestSh("files", "mkdir -p /srv")
    const copied = await ok(["cp", tree, "files:/srv"])
    assert.strictEqual(copied.kind, "directory")
    assert.strictEqual(copied.guestPath, "/srv/tree")
    const listing = await guestSh(
      "files",
      "cd /srv/tree && stat -c '%n %a %U' . top.txt sub sub/run.sh sub/deeper sub/deeper/secret && readlink sub/link && readlink abs-link && sub/run.sh"
    )
    assert.strictEqual(
      listing,
      [
        ". 711 root",
        "top.txt 640 root",
        "sub 755 root",
        "sub/run.sh 755 root",
        "sub/deeper 750 root",
        "sub/deeper/secret 600 root",
        "../top.txt",
        "/etc/passwd",
        "ran",
        ""
      ].join("\n")
    )
    const outDir = NodeFs.mkdtempSync(NodePath.join(scratch, "treeout-"))
    const back = await ok(["cp", "files:/srv/tree", outDir])
    assert.strictEqual(back.hostPath, NodePath.join(outDir, "tree"))
    assertSameTree(tree, NodePath.join(outDir, "tree"))
  })

  it("a guest path that does not exist is NotFound, and nothing is written", async () => {
    const outDir = NodeFs.mkdtempSync(NodePath.join(scratch, "missing-"))
    const missing = await ma(["cp", "files:/no/such/file", outDir])
    assert.strictEqual(missing.code, 1, missing.stderr)
    assert.strictEqual(errorOf(missing).error.kind, "not_found")
    assert.deepStrictEqual(NodeFs.readdirSync(outDir), [])
    const source = NodePath.join(scratch, "hello.sh")
    const noParent = await ma(["cp", source, "files:/no/such/dir/file"])
    assert.strictEqual(errorOf(noParent).error.kind, "not_found")
    // A host destination whose directory is missing fails before any download opens; the next copy works.
    const noHostDir = await ma(["cp", "files:/root/hello.sh", NodePath.join(outDir, "no", "such", "x")])
    assert.strictEqual(errorOf(noHostDir).error.kind, "not_found")
    await ok(["cp", "files:/root/hello.sh", outDir])
    assert.deepStrictEqual(NodeFs.readdirSync(outDir), ["hello.sh"])
  })

  it("refuses relative and .. guest paths, and a guest tree cannot write outside the target", async () => {
    const source = NodePath.join(scratch, "hello.sh")
    for (const bad of ["files:root/x", "files:/root/../../etc/x", "files:/tmp/../x"]) {
      const refused = await ma(["cp", source, bad])
      assert.strictEqual(refused.code, 2, `${bad}: ${refused.stderr}`)
    }
    const refusedOut = await ma(["cp", "files:/root/../etc/passwd", scratch])
    assert.strictEqual(refusedOut.code, 2, refusedOut.stderr)
    // A guest tree whose symlinks point outside: copied as inert links, nothing followed.
    await guestSh(
      "files",
      "mkdir -p /srv/hostile/d && ln -s ../../../../../../tmp /srv/hostile/escape && ln -s / /srv/hostile/root && echo x > /srv/hostile/d/f && ln -s /etc/passwd '/srv/hostile/d/..pass'"
    )
    const outer = NodeFs.mkdtempSync(NodePath.join(scratch, "hostile-"))
    const inner = NodePath.join(outer, "inner")
    NodeFs.mkdirSync(inner)
    const before = NodeFs.readdirSync(scratch).sort()
    await ok(["cp", "files:/srv/hostile", inner])
    assert.deepStrictEqual(NodeFs.readdirSync(outer), ["inner"])
    assert.deepStrictEqual(NodeFs.readdirSync(inner), ["hostile"])
    assert.strictEqual(
      NodeFs.readlinkSync(NodePath.join(inner, "hostile", "escape")),
      "../../../../../../tmp"
    )
    assert.deepStrictEqual(NodeFs.readdirSync(NodePath.join(inner, "hostile")).sort(), [
      "d",
      "escape",
      "root"
    ])
    assert.deepStrictEqual(NodeFs.readdirSync(scratch).sort(), before)
    // Copying out again onto the existing tree is refused rather than merged through its links.
    const again = await ma(["cp", "files:/srv/hostile", inner])
    assert.strictEqual(errorOf(again).error.kind, "conflict")
    // A file copied to a host path that is a symlink replaces the link, never writes through it.
    const victim = NodePath.join(outer, "victim")
    NodeFs.writeFileSync(victim, "untouched")
    NodeFs.symlinkSync(victim, NodePath.join(inner, "out.txt"))
    await ok(["cp", "files:/root/out.txt", NodePath.join(inner, "out.txt")])
    assert.strictEqual(NodeFs.readFileSync(victim, "utf8"), "untouched")
    assert.isFalse(NodeFs.lstatSync(NodePath.join(inner, "out.txt")).isSymbolicLink())
  })
})

describe("cp from a compromised guest", () => {
  it("a guest tar stream that tries to climb out of the target writes nothing outside it", async () => {
    // The guest's own `tar` is replaced (the agent searches /usr/local/bin first) by one that sends
    // whatever archive we planted: what a compromised guest could send.
    const fakeTar = NodePath.join(scratch, "fake-tar")
    NodeFs.writeFileSync(fakeTar, "#!/bin/sh\ncat /root/evil.tar\n")
    NodeFs.chmodSync(fakeTar, 0o755)
    await guestSh("files", "mkdir -p /usr/local/bin /srv/victim")
    await ok(["cp", fakeTar, "files:/usr/local/bin/tar"])
    const outer = NodeFs.mkdtempSync(NodePath.join(scratch, "evil-"))
    const inner = NodePath.join(outer, "inner")
    NodeFs.mkdirSync(inner)
    const evil = [
      tarArchive(tarHeader("victim/", "5"), tarFile("victim/../../escaped-a", "x")),
      tarArchive(
        tarHeader("victim/", "5"),
        tarHeader("victim/l", "2", 0, "../../.."),
        tarFile("victim/l/escaped-b", "x")
      ),
      tarArchive(tarHeader("victim/", "5"), tarFile("/tmp/escaped-c", "x")),
      tarArchive(tarHeader("victim/", "5"), tarHeader("victim/dev", "3"))
    ]
    try {
      for (const [i, archive] of evil.entries()) {
        const planted = NodePath.join(scratch, `evil-${i}.tar`)
        NodeFs.writeFileSync(planted, archive)
        await ok(["cp", planted, "files:/root/evil.tar"])
        const copied = await ma(["cp", "files:/srv/victim", inner])
        if (i < 3) {
          assert.strictEqual(copied.code, 1, `archive ${i}: ${copied.stdout}`)
          assert.deepStrictEqual(NodeFs.readdirSync(inner), [], `archive ${i} left nothing in the target`)
        } else {
          // A device node is never created on the host: the tree arrives without it.
          assert.strictEqual(copied.code, 0, copied.stderr)
          assert.deepStrictEqual(NodeFs.readdirSync(NodePath.join(inner, "victim")), [])
          NodeFs.rmSync(NodePath.join(inner, "victim"), { recursive: true })
        }
        assert.deepStrictEqual(NodeFs.readdirSync(outer), ["inner"])
      }
      for (const name of ["escaped-a", "escaped-b", "escaped-c"]) {
        for (const dir of [outer, scratch, NodeOs.tmpdir(), "/"]) {
          assert.isFalse(NodeFs.existsSync(NodePath.join(dir, name)), `${dir}/${name}`)
        }
      }
    } finally {
      await guestSh("files", "rm -f /usr/local/bin/tar /root/evil.tar")
    }
  })
})

describe("cp on a halted workspace (offline)", () => {
  it("copies files and trees in and out without booting", async () => {
    await guestSh("files", "echo before-halt > /root/kept.txt; chmod 640 /root/kept.txt; sync")
    await ok(["halt", "files"])
    assert.deepStrictEqual(qemuProcesses(), [])
    const outDir = NodeFs.mkdtempSync(NodePath.join(scratch, "offline-"))
    const file = await ok(["cp", "files:/root/kept.txt", outDir])
    assert.strictEqual(file.via, "offline")
    assert.strictEqual(NodeFs.readFileSync(NodePath.join(outDir, "kept.txt"), "utf8"), "before-halt\n")
    assert.strictEqual(mode(NodePath.join(outDir, "kept.txt")), 0o640)
    // The tree copied in while running comes out offline the same.
    await ok(["cp", "files:/srv/tree", outDir])
    assertSameTree(NodePath.join(scratch, "tree"), NodePath.join(outDir, "tree"))
    // In, offline: a file and a tree.
    const source = NodePath.join(scratch, "offline.sh")
    NodeFs.writeFileSync(source, "#!/bin/sh\necho offline\n")
    NodeFs.chmodSync(source, 0o700)
    assert.strictEqual((await ok(["cp", source, "files:/root"])).via, "offline")
    const tree2 = NodePath.join(scratch, "tree2")
    makeTree(tree2)
    assert.strictEqual((await ok(["cp", tree2, "files:/root"])).guestPath, "/root/tree2")
    const blob = NodePath.join(scratch, "blob.bin")
    await ok(["cp", blob, "files:/root/blob2.bin"])
    const missing = await ma(["cp", "files:/nothing/here", outDir])
    assert.strictEqual(errorOf(missing).error.kind, "not_found")
    assert.deepStrictEqual(qemuProcesses(), [], "offline copies boot nothing")
    // What was written offline is there after boot, with its modes.
    await ok(["start", "files"])
    assert.strictEqual(
      await guestSh("files", "stat -c '%a %U' /root/offline.sh; /root/offline.sh"),
      "700 root\noffline\n"
    )
    assert.strictEqual(
      (await guestSh("files", "sha256sum /root/blob2.bin")).split(" ")[0],
      sha(blob)
    )
    const back = NodeFs.mkdtempSync(NodePath.join(scratch, "tree2back-"))
    await ok(["cp", "files:/root/tree2", back])
    assertSameTree(tree2, NodePath.join(back, "tree2"))
  })
})

describe("declared outputs", () => {
  it("run collects its outputs before teardown; artifacts get works after the workspace is gone", async () => {
    const result = await ok([
      "run",
      "--name",
      "producer",
      "--output",
      "report=/root/report.txt",
      "--output",
      "logs=/root/logs",
      "--output",
      "absent=/root/never",
      busybox,
      "--",
      "sh",
      "-c",
      "echo result > /root/report.txt; chmod 640 /root/report.txt; mkdir -p /root/logs/a; echo one > /root/logs/a/1.log; chmod 755 /root/logs/a/1.log"
    ])
    assert.strictEqual(result.result.exitCode, 0)
    assert.notInclude((await ok(["list"])).workspaces.map((w: { name: string }) => w.name), "producer")
    const listed = await ok(["artifacts", "ls", "producer"])
    assert.isFalse(listed.exists)
    assert.deepStrictEqual(
      listed.artifacts.map((
        a: { name: string; collected: boolean; size?: number }
      ) => [a.name, a.collected, a.size]),
      [["report", true, 7], ["logs", true, 4], ["absent", false, undefined]]
    )
    const collection = NodePath.join(stateDir, "artifacts", "producer")
    assert.strictEqual(mode(collection), 0o700)
    assert.strictEqual(mode(NodePath.join(collection, "manifest.json")), 0o600)
    // Everything the state directory keeps is private; the guest's modes come back with `get`.
    const kept: Array<string> = []
    const walk = (path: string) => {
      const stat = NodeFs.lstatSync(path)
      kept.push(`${NodePath.relative(collection, path)} ${(stat.mode & 0o7777).toString(8)}`)
      if (stat.isDirectory()) {
        for (const child of NodeFs.readdirSync(path)) {
          walk(NodePath.join(path, child))
        }
      }
    }
    walk(collection)
    for (const line of kept) assert.match(line, / (600|700)$/, line)
    const dest = NodeFs.mkdtempSync(NodePath.join(scratch, "artifacts-"))
    const got = await ok(["artifacts", "get", "producer", "report", dest])
    assert.strictEqual(got.from, "collection")
    assert.strictEqual(NodeFs.readFileSync(NodePath.join(dest, "report.txt"), "utf8"), "result\n")
    assert.strictEqual(mode(NodePath.join(dest, "report.txt")), 0o640)
    await ok(["artifacts", "get", "producer", "logs", dest])
    assert.strictEqual(NodeFs.readFileSync(NodePath.join(dest, "logs", "a", "1.log"), "utf8"), "one\n")
    assert.strictEqual(mode(NodePath.join(dest, "logs", "a", "1.log")), 0o755)
    const absent = await ma(["artifacts", "get", "producer", "absent", dest])
    assert.strictEqual(errorOf(absent).error.kind, "not_found")
    const unknown = await ma(["artifacts", "get", "producer", "nope", dest])
    assert.strictEqual(errorOf(unknown).error.kind, "not_found")
    assert.isTrue((await ok(["artifacts", "rm", "producer"])).removed)
    assert.isFalse(NodeFs.existsSync(collection))
    assert.strictEqual(errorOf(await ma(["artifacts", "ls", "producer"])).error.kind, "not_found")
  })

  it("artifacts get copies off a live or halted workspace; bad --output is a usage error", async () => {
    await ok(["create", "--image", busybox, "--output", "note=/root/note", "declared"])
    const listed = await ok(["artifacts", "ls", "declared"])
    assert.deepStrictEqual(listed.artifacts, [{ name: "note", path: "/root/note", collected: false }])
    await ok(["start", "declared"])
    await guestSh("declared", "echo live > /root/note")
    const dest = NodeFs.mkdtempSync(NodePath.join(scratch, "declared-"))
    const live = await ok(["artifacts", "get", "declared", "note", NodePath.join(dest, "live")])
    assert.strictEqual(live.via, "channel")
    assert.strictEqual(NodeFs.readFileSync(NodePath.join(dest, "live"), "utf8"), "live\n")
    await guestSh("declared", "sync")
    await ok(["halt", "declared"])
    const offline = await ok(["artifacts", "get", "declared", "note", NodePath.join(dest, "offline")])
    assert.strictEqual(offline.via, "offline")
    assert.strictEqual(NodeFs.readFileSync(NodePath.join(dest, "offline"), "utf8"), "live\n")
    await ok(["delete", "declared"])
    for (const bad of ["noequals", "x=relative", "../x=/root/a", "a=/root/../etc"]) {
      const refused = await ma(["create", "--image", busybox, "--output", bad, "bad-output"])
      assert.strictEqual(refused.code, 2, `${bad}: ${refused.stderr}`)
    }
  })
})

describe("cp on a Debian minbase workspace (GNU tar in the guest)", () => {
  beforeAll(async () => {
    const minbase = pushSpec(registry, scratch, "debian:minbase", [{
      layers: [NodeFs.readFileSync(minbaseTarball())],
      architecture: hostArchitecture,
      config: { Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], Cmd: ["bash"] }
    }]).ref
    await ok(["image", "pull", minbase])
    await ok(["create", "--image", minbase, "deb"])
    await ok(["start", "deb"])
  }, 900_000)
  afterAll(async () => {
    await ma(["delete", "--force", "deb"])
  })

  it("copies a tree in and out with modes, nested directories, symlinks and long names", async () => {
    const tree = NodePath.join(scratch, "debtree")
    makeTree(tree)
    const long = `${"l".repeat(80)}/${"m".repeat(80)}/${"n".repeat(110)}`
    NodeFs.mkdirSync(NodePath.join(tree, NodePath.dirname(long)), { recursive: true })
    NodeFs.writeFileSync(NodePath.join(tree, long), "long name\n")
    await ok(["cp", tree, "deb:/srv"])
    assert.strictEqual(
      await guestSh(
        "deb",
        "cd /srv/debtree && stat -c '%n %a %U' sub/deeper sub/deeper/secret && readlink sub/link"
      ),
      "sub/deeper 750 root\nsub/deeper/secret 600 root\n../top.txt\n"
    )
    assert.strictEqual(await guestSh("deb", `cat /srv/debtree/${long}`), "long name\n")
    const out = NodeFs.mkdtempSync(NodePath.join(scratch, "debout-"))
    await ok(["cp", "deb:/srv/debtree", out])
    assertSameTree(tree, NodePath.join(out, "debtree"))
    // A file out of the Debian userland, with its mode.
    await ok(["cp", "deb:/etc/debian_version", out])
    assert.match(NodeFs.readFileSync(NodePath.join(out, "debian_version"), "utf8"), /^12\./)
    assert.strictEqual(mode(NodePath.join(out, "debian_version")), 0o644)
  })
})

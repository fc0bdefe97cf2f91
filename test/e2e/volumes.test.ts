/**
 * Volumes, bundles and disk images on real QEMU microVMs, driven through the CLI: data that outlives
 * its workspace, read-only mounts, the single read-write holder, tar bundles built into one-shot
 * disks, ext4 images attached as they are, offline resize.
 */
import Database from "better-sqlite3"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { defaultImage } from "../../src/layers/image/BuiltinImages.ts"
import { cliAsync, type CliResult, errorOf, stopRuntime } from "../support/cli.ts"
import { qemuProcessesMentioning, requireTool } from "../support/kernel.ts"

let stateDir: string
let scratch: string

const ma = (args: ReadonlyArray<string>): Promise<CliResult> =>
  cliAsync(args, { stateDir, env: { MICROAGENT_BACKEND: "qemu" } })

const json = (result: CliResult) => {
  assert.strictEqual(result.stderr.includes("internal error"), false, result.stderr)
  assert.isAbove(result.stdout.length, 0, `no output; exit ${result.code}; stderr: ${result.stderr}`)
  return JSON.parse(result.stdout)
}

const ok = async (args: ReadonlyArray<string>) => {
  const result = await ma(args)
  assert.strictEqual(result.code, 0, `${args.join(" ")}: ${result.stderr}`)
  return result
}

/** The guest's stdout of a one-shot run. */
const runOut = async (args: ReadonlyArray<string>) => json(await ok(["run", ...args])).result.stdout as string

/** QEMU processes whose command line mentions this test's state directory. */
const qemuProcesses = (): Array<number> => qemuProcessesMentioning(stateDir)

/** Workspace records, runtime directories and workspace directories: what a failed command must not leave. */
const leftovers = async () => ({
  workspaces: json(await ma(["list"])).workspaces.map((w: { name: string }) => w.name),
  run: NodeFs.readdirSync(NodePath.join(stateDir, "run")).filter((f) => !f.startsWith("runtime")),
  dirs: NodeFs.readdirSync(NodePath.join(stateDir, "workspaces")).filter((f) => !f.startsWith(".")),
  qemu: qemuProcesses().length
})

/** The claims as recorded in the store, unfiltered: a release must have cleared them, not merely staled them. */
const recordedUsers = (volume: string) => {
  const db = new Database(NodePath.join(stateDir, "state.db"), { readonly: true, fileMustExist: true })
  try {
    const row = db.prepare("SELECT attached_to FROM volumes WHERE name = ?").get(volume) as
      | { attached_to: string | null }
      | undefined
    const readers = db.prepare("SELECT workspace FROM volume_readers WHERE volume = ?").all(volume) as Array<
      { workspace: string }
    >
    return { holder: row?.attached_to ?? null, readers: readers.map((r) => r.workspace) }
  } finally {
    db.close()
  }
}

const holderOf = async (volume: string) =>
  json(await ok(["volume", "inspect", volume])).attachedTo as string | undefined

beforeAll(() => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("mke2fs", "e2fsprogs")
  requireTool("resize2fs", "e2fsprogs")
  requireTool("debugfs", "e2fsprogs")
  requireTool("tar", "tar")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-e2e-vol-"))
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-e2e-vol-scratch-"))
})

afterAll(() => {
  stopRuntime(stateDir)
  for (const pid of qemuProcesses()) process.kill(pid, "SIGKILL")
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
  NodeFs.rmSync(scratch, { recursive: true, force: true })
})

describe("volumes on real microVMs", () => {
  it("keeps a volume's data after its workspace is deleted, for the next workspace", async () => {
    const made = json(await ok(["volume", "create", "--size-mib", "64", "shared"]))
    assert.strictEqual(made.sizeMiB, 64)
    const file = NodePath.join(stateDir, "volumes", "shared.ext4")
    assert.strictEqual(NodeFs.statSync(file).mode & 0o777, 0o600)
    assert.strictEqual(NodeFs.statSync(NodePath.join(stateDir, "volumes")).mode & 0o777, 0o700)
    assert.strictEqual(NodeFs.statSync(file).size, 64 * 1024 * 1024)

    await ok(["create", "--image", defaultImage, "-v", "shared:/data", "writer"])
    await ok(["start", "writer"])
    assert.strictEqual(await holderOf("shared"), "writer")
    await ok(["exec", "writer", "--", "sh", "-c", "echo from writer > /data/note && sync"])
    await ok(["delete", "--force", "writer"])
    assert.deepStrictEqual(
      recordedUsers("shared"),
      { holder: null, readers: [] },
      "delete releases the volume"
    )
    assert.deepStrictEqual(await leftovers(), { workspaces: [], run: [], dirs: [], qemu: 0 })

    assert.strictEqual(
      await runOut(["-v", "shared:/data", defaultImage, "--", "cat", "/data/note"]),
      "from writer\n"
    )
    const listed = json(await ok(["volume", "ls"])).volumes
    assert.deepStrictEqual(listed.map((v: { name: string }) => v.name), ["shared"])
  })

  it("mounts a volume read-only: writes are refused and the data is untouched", async () => {
    const out = json(
      await ma([
        "run",
        "-v",
        "shared:/data:ro",
        defaultImage,
        "--",
        "sh",
        "-c",
        "cat /data/note; echo x > /data/other"
      ])
    )
    assert.strictEqual(out.result.stdout, "from writer\n")
    assert.notStrictEqual(out.result.exitCode, 0)
    assert.match(out.result.stderr, /Read-only file system/)
    assert.strictEqual(
      await runOut(["-v", "shared:/data", defaultImage, "--", "sh", "-c", "ls /data | grep -v lost+found"]),
      "note\n"
    )
  })

  it("refuses a second read-write holder with a Conflict naming the first, leaves nothing, and reclaims a stale holder", async () => {
    await ok(["volume", "create", "--size-mib", "32", "single"])
    await ok(["create", "--image", defaultImage, "-v", "single:/data", "holder"])
    await ok(["start", "holder"])
    const before = await leftovers()
    assert.deepStrictEqual(before, { workspaces: ["holder"], run: ["holder"], dirs: ["holder"], qemu: 1 })

    const second = await ma(["run", "-v", "single:/data", defaultImage, "--", "true"])
    assert.strictEqual(second.code, 1, second.stderr)
    const error = errorOf(second).error
    assert.strictEqual(error.kind, "conflict")
    assert.match(error.message, /volume single is attached read-write to workspace holder/)
    const readOnly = await ma(["run", "-v", "single:/data:ro", defaultImage, "--", "true"])
    assert.strictEqual(errorOf(readOnly).error.kind, "conflict", "nor read-only while it is written")
    assert.deepStrictEqual(await leftovers(), before, "the refused runs left nothing")

    const removal = await ma(["volume", "rm", "single"])
    assert.strictEqual(errorOf(removal).error.kind, "conflict")
    const resize = await ma(["volume", "resize", "--size-mib", "64", "single"])
    assert.strictEqual(errorOf(resize).error.kind, "conflict")

    // The holder's VMM dies without a halt: its claim is stale, and the next workspace takes the volume.
    for (const pid of qemuProcesses()) process.kill(pid, "SIGKILL")
    assert.strictEqual(
      await runOut(["-v", "single:/data", defaultImage, "--", "sh", "-c", "echo ok"]),
      "ok\n"
    )
    assert.strictEqual(await holderOf("single"), undefined)

    // halt releases too.
    await ok(["start", "holder"])
    assert.strictEqual(await holderOf("single"), "holder")
    await ok(["halt", "holder"])
    assert.deepStrictEqual(recordedUsers("single"), { holder: null, readers: [] }, "halt releases the volume")
    await ok(["delete", "holder"])

    // Readers share a volume; a writer waits until the last running one is gone.
    await ok(["create", "--image", defaultImage, "-v", "single:/data:ro", "reader"])
    await ok(["start", "reader"])
    assert.deepStrictEqual(json(await ok(["volume", "inspect", "single"])).readers, ["reader"])
    assert.strictEqual(
      await runOut(["-v", "single:/data:ro", defaultImage, "--", "echo", "second reader"]),
      "second reader\n"
    )
    const writer = await ma(["run", "-v", "single:/data", defaultImage, "--", "true"])
    assert.strictEqual(errorOf(writer).error.kind, "conflict")
    assert.match(errorOf(writer).error.message, /mounted read-only by workspace reader/)
    assert.strictEqual(errorOf(await ma(["volume", "rm", "single"])).error.kind, "conflict")
    await ok(["delete", "--force", "reader"])
    assert.deepStrictEqual(recordedUsers("single"), { holder: null, readers: [] }, "kill releases the reader")
    await ok(["volume", "rm", "single"])
    assert.isFalse(NodeFs.existsSync(NodePath.join(stateDir, "volumes", "single.ext4")))
  })

  it("a boot that fails releases the volume it claimed", async () => {
    await ok(["volume", "create", "--size-mib", "32", "bootfail"])
    // /etc/passwd is a file in the image: the agent cannot mount a disk there and stops the boot.
    await ok(["create", "--image", defaultImage, "-v", "bootfail:/etc/passwd", "doomed"])
    const started = await ma(["start", "--boot-timeout", "120", "doomed"])
    assert.strictEqual(started.code, 1, started.stderr)
    assert.strictEqual(json(await ok(["inspect", "doomed"])).workspace.state, "failed")
    assert.deepStrictEqual(recordedUsers("bootfail"), { holder: null, readers: [] })
    assert.strictEqual(qemuProcesses().length, 0)
    await ok(["delete", "doomed"])
    await ok(["volume", "rm", "bootfail"])
  })

  it("takes disks, bundles and outputs from a spec file, its relative paths from the spec's directory", async () => {
    const specDir = NodeFs.mkdtempSync(NodePath.join(scratch, "spec-"))
    const tree = NodeFs.mkdtempSync(NodePath.join(scratch, "spec-tree-"))
    NodeFs.writeFileSync(NodePath.join(tree, "hello"), "from the bundle\n")
    NodeChild.execFileSync("tar", ["-cf", NodePath.join(specDir, "src.tar"), "-C", tree, "."])
    const seed = NodeFs.mkdtempSync(NodePath.join(scratch, "spec-seed-"))
    NodeFs.writeFileSync(NodePath.join(seed, "seed"), "from the disk\n")
    NodeChild.execFileSync("mke2fs", [
      "-q",
      "-t",
      "ext4",
      "-d",
      seed,
      NodePath.join(specDir, "data.ext4"),
      "16M"
    ])
    NodeFs.writeFileSync(
      NodePath.join(specDir, "microagent.yaml"),
      "disks:\n  - { name: data, path: data.ext4, mountpoint: /data, mode: ro }\n"
        + "bundles:\n  - { path: ./src.tar, mountpoint: /src }\n"
        + "outputs:\n  - { name: report, path: /out/report.txt }\n"
    )
    const ran = json(
      await ok([
        "run",
        "--file",
        NodePath.join(specDir, "microagent.yaml"),
        "--",
        "sh",
        "-c",
        "cat /src/hello /data/seed; mkdir -p /out; echo done > /out/report.txt; touch /data/x 2>/dev/null || echo ro"
      ])
    )
    assert.strictEqual(ran.result.stdout, "from the bundle\nfrom the disk\nro\n")
    const fetched = NodePath.join(scratch, "spec-report.txt")
    await ok(["artifacts", "get", ran.workspace, "report", fetched])
    assert.strictEqual(NodeFs.readFileSync(fetched, "utf8"), "done\n")
    await ok(["artifacts", "rm", ran.workspace])

    // A disk entry must be an image, and a mount point given by the spec and by -v is refused.
    NodeFs.writeFileSync(
      NodePath.join(specDir, "wrong.yaml"),
      "disks:\n  - { path: src.tar, mountpoint: /src }\n"
    )
    const wrong = await ma(["run", "--file", NodePath.join(specDir, "wrong.yaml"), "--", "true"])
    assert.strictEqual(wrong.code, 2, wrong.stderr)
    assert.include(errorOf(wrong).error.message, "disks[0]")
    const twice = await ma([
      "run",
      "--file",
      NodePath.join(specDir, "microagent.yaml"),
      "-v",
      `${NodePath.join(specDir, "src.tar")}:/data`,
      "--",
      "true"
    ])
    assert.strictEqual(twice.code, 2, twice.stderr)
    assert.include(errorOf(twice).error.message, "/data")
    assert.deepStrictEqual(await leftovers(), { workspaces: [], run: [], dirs: [], qemu: 0 })
  })

  it("mounts a tar bundle as a one-shot disk, removed at stop, and refuses one that escapes its root", async () => {
    const tree = NodePath.join(scratch, "tree")
    NodeFs.mkdirSync(NodePath.join(tree, "sub"), { recursive: true })
    NodeFs.writeFileSync(NodePath.join(tree, "sub", "hello.txt"), "from the bundle\n")
    const bundle = NodePath.join(scratch, "bundle.tar.gz")
    NodeChild.execFileSync("tar", ["-czf", bundle, "-C", tree, "."])
    assert.strictEqual(
      await runOut(["-v", `${bundle}:/bundle`, defaultImage, "--", "cat", "/bundle/sub/hello.txt"]),
      "from the bundle\n"
    )

    await ok(["create", "--image", defaultImage, "-v", `${bundle}:/bundle:ro`, "bundled"])
    await ok(["start", "bundled"])
    const disks = NodeFs.readdirSync(NodePath.join(stateDir, "run", "bundled")).filter((f) =>
      f.endsWith(".ext4")
    )
    assert.deepStrictEqual(disks, ["bundle-0.ext4"])
    assert.strictEqual(
      json(await ok(["exec", "bundled", "--", "cat", "/bundle/sub/hello.txt"])).result.stdout,
      "from the bundle\n"
    )
    await ok(["halt", "bundled"])
    assert.deepStrictEqual(
      NodeFs.readdirSync(NodePath.join(stateDir, "run", "bundled")).filter((f) => f.endsWith(".ext4")),
      [],
      "the bundle's disk goes at stop"
    )
    await ok(["delete", "bundled"])

    // An archive whose entry climbs out of its root.
    const inner = NodePath.join(scratch, "inner")
    NodeFs.mkdirSync(inner, { recursive: true })
    NodeFs.writeFileSync(NodePath.join(scratch, "escape.txt"), "outside\n")
    const evil = NodePath.join(scratch, "evil.tar")
    NodeChild.execFileSync("tar", ["-cPf", evil, "../escape.txt"], { cwd: inner })
    const refused = await ma(["run", "-v", `${evil}:/evil`, defaultImage, "--", "true"])
    assert.strictEqual(refused.code, 1, refused.stderr)
    assert.strictEqual(errorOf(refused).error.kind, "policy_denied")
    assert.match(errorOf(refused).error.message, /refusing bundle/)
    assert.deepStrictEqual(await leftovers(), { workspaces: [], run: [], dirs: [], qemu: 0 })
  })

  it("attaches an existing ext4 image as it is: the guest reads it, and what it writes is in the file", async () => {
    const content = NodePath.join(scratch, "content")
    NodeFs.mkdirSync(content, { recursive: true })
    NodeFs.writeFileSync(NodePath.join(content, "given.txt"), "made on the host\n")
    const image = NodePath.join(scratch, "disk.img")
    NodeChild.execFileSync("truncate", ["-s", "32M", image])
    NodeChild.execFileSync("mke2fs", ["-q", "-F", "-t", "ext4", "-d", content, image])
    assert.strictEqual(
      await runOut([
        "-v",
        `${image}:/mnt/disk`,
        defaultImage,
        "--",
        "sh",
        "-c",
        "cat /mnt/disk/given.txt; echo back > /mnt/disk/reply.txt; sync"
      ]),
      "made on the host\n"
    )
    const reply = NodeChild.execFileSync("debugfs", ["-R", "cat /reply.txt", image], {
      stdio: ["ignore", "pipe", "ignore"]
    })
    assert.strictEqual(reply.toString(), "back\n")
  })

  it("rejects bad names, bad guest paths and host directories with InvalidInput, naming the rule", async () => {
    const slash = await ma(["volume", "create", "foo/bar"])
    assert.strictEqual(slash.code, 2)
    assert.strictEqual(errorOf(slash).error.kind, "permanent")
    assert.match(errorOf(slash).error.message, /contains '\/'/)
    const upper = await ma(["volume", "create", "Data"])
    assert.strictEqual(upper.code, 2)
    assert.match(errorOf(upper).error.message, /uppercase/)
    const dots = await ma(["volume", "create", "a..b"])
    assert.strictEqual(dots.code, 2)

    const flag = await ma(["run", "-v", "foo/bar:/data", defaultImage, "--", "true"])
    assert.strictEqual(flag.code, 2)
    const root = await ma(["run", "-v", "shared:/", defaultImage, "--", "true"])
    assert.strictEqual(root.code, 2)
    assert.match(errorOf(root).error.message, /cannot be \//)
    const relative = await ma(["run", "-v", "shared:/a/../b", defaultImage, "--", "true"])
    assert.strictEqual(relative.code, 2)
    const directory = await ma(["run", "-v", `${scratch}:/data`, defaultImage, "--", "true"])
    assert.strictEqual(directory.code, 2)
    assert.match(errorOf(directory).error.message, /host directories cannot be mounted/)
    assert.match(errorOf(directory).error.remediation, /tar/)
    const missing = await ma(["run", "-v", "nosuch:/data", defaultImage, "--", "true"])
    assert.strictEqual(missing.code, 1)
    assert.strictEqual(errorOf(missing).error.kind, "not_found")
    assert.match(errorOf(missing).error.remediation, /volume create nosuch/)
    assert.deepStrictEqual(await leftovers(), { workspaces: [], run: [], dirs: [], qemu: 0 })
  })

  it("grows a volume offline, and refuses to shrink it below its content", async () => {
    await ok(["volume", "create", "--size-mib", "64", "growing"])
    const sizeKiB = async () =>
      Number(
        (await runOut(["-v", "growing:/data", defaultImage, "--", "sh", "-c", "df -k /data | tail -1"]))
          .trim()
          .split(/\s+/)[1]
      )
    const small = await sizeKiB()
    assert.isBelow(small, 64 * 1024)
    const grown = json(await ok(["volume", "resize", "--size-mib", "256", "growing"]))
    assert.strictEqual(grown.sizeMiB, 256)
    const large = await sizeKiB()
    assert.isAbove(large, 200 * 1024, `grew from ${small} KiB to ${large} KiB`)

    await ok([
      "run",
      "-v",
      "growing:/data",
      defaultImage,
      "--",
      "sh",
      "-c",
      "head -c 100000000 /dev/zero > /data/big; sync"
    ])
    const shrink = await ma(["volume", "resize", "--size-mib", "64", "growing"])
    assert.strictEqual(shrink.code, 1, shrink.stderr)
    assert.strictEqual(errorOf(shrink).error.kind, "resource_exhausted")
    assert.match(errorOf(shrink).error.message, /content needs \d+ MiB/)
    const shrunk = json(await ok(["volume", "resize", "--size-mib", "160", "growing"]))
    assert.strictEqual(shrunk.sizeMiB, 160)
    assert.strictEqual(
      await runOut(["-v", "growing:/data", defaultImage, "--", "sh", "-c", "wc -c < /data/big"]),
      "100000000\n"
    )
  })
})

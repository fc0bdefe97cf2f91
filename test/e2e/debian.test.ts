/**
 * A Debian minbase image, built in the test setup from Debian's packages with mmdebstrap (cached per
 * machine), pushed to a loopback registry and booted as a real microVM: a full distribution userland,
 * owners and modes as dpkg set them; and setup that installs a Debian package with apt from a flat
 * repository the test serves on one of the host's addresses (reached through egress mediation): it
 * runs once, a failing step leaves it pending, and the next start runs it again.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { type AptRepo, debianPackages, startAptRepo } from "../support/aptRepo.ts"
import { cliAsync, type CliResult, stopRuntime } from "../support/cli.ts"
import { hostArchitecture, minbaseTarball, pushSpec } from "../support/images.ts"
import { requireTool, startRegistry, type TestRegistry } from "../support/registry.ts"

let registry: TestRegistry
let stateDir: string
let scratch: string
let minbase: string
let repo: AptRepo | undefined

const ma = (args: ReadonlyArray<string>): Promise<CliResult> =>
  cliAsync(args, { stateDir, env: { MICROAGENT_BACKEND: "qemu" } })

beforeAll(async () => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-debian-"))
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-debian-scratch-"))
  registry = await startRegistry()
  minbase = pushSpec(registry, scratch, "debian:minbase", [{
    layers: [NodeFs.readFileSync(minbaseTarball())],
    architecture: hostArchitecture,
    config: { Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], Cmd: ["bash"] }
  }]).ref
  const pulled = await ma(["image", "pull", minbase])
  assert.strictEqual(pulled.code, 0, pulled.stderr)
}, 900_000)

afterAll(async () => {
  await ma(["kill", "aptly"])
  await repo?.close()
  stopRuntime(stateDir)
  await registry?.stop()
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
  NodeFs.rmSync(scratch, { recursive: true, force: true })
})

describe("a Debian minbase image", () => {
  it("boots and runs Debian's own tools, as the users dpkg made", async () => {
    const out = await ma([
      "run",
      minbase,
      "--",
      "bash",
      "-c",
      "cat /etc/debian_version; dpkg -s coreutils | grep ^Status; stat -c '%U %a' /var/mail /usr/bin/passwd; runuser -u nobody -- id -u"
    ])
    assert.strictEqual(out.code, 0, `${out.stdout}\n${out.stderr}`)
    const lines = JSON.parse(out.stdout).result.stdout.trim().split("\n")
    assert.match(lines[0], /^12\.\d+/)
    assert.strictEqual(lines[1], "Status: install ok installed")
    // setuid/setgid are stripped from files unless --allow-guest-setuid (passwd is 4755 in Debian); a
    // directory's setgid (group inheritance) is kept (docs/images.md).
    assert.strictEqual(lines[2], "root 2775")
    assert.strictEqual(lines[3], "root 755")
    assert.strictEqual(lines[4], "65534")
  })

  it("shares the image's disk with a workspace made from it, until the workspace is deleted", async () => {
    requireTool("qemu-img", "qemu-utils")
    const bases = () => {
      try {
        return NodeFs.readdirSync(NodePath.join(stateDir, "bases")).filter((name) => name.endsWith(".ext4"))
      } catch {
        return []
      }
    }
    assert.deepStrictEqual(bases(), [], "the run before left no base behind")
    const created = await ma(["create", "--image", minbase, "shared"])
    assert.strictEqual(created.code, 0, created.stderr)
    // An overlay over the image's baseline (a base in bases/), not a copy of its hundreds of MiB.
    const dir = NodePath.join(stateDir, "workspaces", "shared")
    assert.isFalse(NodeFs.existsSync(NodePath.join(dir, "rootfs")))
    const overlay = NodePath.join(dir, "rootfs.qcow2")
    assert.isBelow(NodeFs.statSync(overlay).blocks * 512, 4 * 1024 * 1024)
    assert.strictEqual(bases().length, 1)
    assert.isAbove(
      NodeFs.statSync(NodePath.join(stateDir, "bases", bases()[0]!)).blocks * 512,
      64 * 1024 * 1024
    )
    // It boots (warm: the template's disk is shared the same way) and writes only into its overlay.
    const started = await ma(["start", "shared"])
    assert.strictEqual(started.code, 0, started.stderr)
    const events = JSON.parse((await ma(["events", "shared", "--json"])).stdout).events as Array<
      { type: string; detail?: string }
    >
    assert.isTrue(
      events.some((e) => e.type === "warm" && e.detail?.startsWith("restored template")),
      JSON.stringify(events)
    )
    const wrote = await ma([
      "exec",
      "shared",
      "--",
      "sh",
      "-c",
      "echo mine > /root/mine; sync; cat /etc/debian_version"
    ])
    assert.strictEqual(wrote.code, 0, wrote.stderr)
    assert.match(JSON.parse(wrote.stdout).result.stdout, /^12\.\d+/)
    assert.isTrue(NodeFs.existsSync(overlay), "still an overlay")
    assert.strictEqual((await ma(["halt", "shared"])).code, 0)
    // The next boot is cold, on the same overlay: the file is there.
    assert.strictEqual((await ma(["start", "shared"])).code, 0)
    const read = await ma(["exec", "shared", "--", "cat", "/root/mine"])
    assert.strictEqual(JSON.parse(read.stdout).result.stdout, "mine\n")
    assert.strictEqual((await ma(["delete", "--force", "shared"])).code, 0)
    assert.deepStrictEqual(bases(), [], "the bases go with the last overlay")
  })

  it("runs setup that installs a package with apt once; a failing step leaves it pending for the next start", async () => {
    const address = Object.values(NodeOs.networkInterfaces()).flatMap((list) => list ?? []).find((a) =>
      a.family === "IPv4" && !a.internal
    )?.address
    assert.isDefined(address, "this test needs a non-loopback IPv4 address on the host")
    repo = await startAptRepo(address, debianPackages(["hello"]))
    // The package answers 404 at first: the install step fails, and with it the first start.
    repo.serving = false
    const endpoint = `${address}:${repo.port}`
    const created = await ma([
      "create",
      "--image",
      minbase,
      "--egress-allow",
      endpoint,
      "--setup",
      `rm -f /etc/apt/sources.list.d/*; echo 'deb [trusted=yes] ${repo.url} ./' > /etc/apt/sources.list`,
      "--setup",
      "apt-get update -q",
      "--setup",
      "apt-get install -y -q --no-install-recommends hello",
      "aptly"
    ])
    assert.strictEqual(created.code, 0, created.stderr)
    const setupEvents = async () =>
      (JSON.parse((await ma(["events", "aptly", "--json"])).stdout).events as Array<
        { type: string; detail: string }
      >)
        .filter((e) => e.type === "setup").map((e) => e.detail.split(":")[0])

    const failed = await ma(["start", "aptly"])
    assert.notStrictEqual(failed.code, 0, failed.stdout)
    assert.include(failed.stderr, "setup 3/3 failed")
    assert.include(failed.stderr, "404")
    assert.isUndefined(JSON.parse((await ma(["inspect", "aptly", "--json"])).stdout).workspace.setupDone)
    assert.deepStrictEqual(await setupEvents(), [
      "setup 1/3 ok",
      "setup 2/3 ok",
      "setup 3/3 failed (exited 100)"
    ])

    // Served now: the next start runs the whole setup again, and it installs the package.
    repo.serving = true
    const started = await ma(["start", "aptly"])
    assert.strictEqual(started.code, 0, started.stderr)
    const hello = async () => {
      const out = await ma(["exec", "aptly", "--", "sh", "-c", "hello; dpkg -s hello | grep ^Status"])
      assert.strictEqual(out.code, 0, out.stderr)
      return JSON.parse(out.stdout).result.stdout
    }
    assert.strictEqual(await hello(), "Hello, world!\nStatus: install ok installed\n")
    assert.include(repo.requests, "/Packages")
    assert.isTrue(repo.requests.some((path) => /^\/hello_.*\.deb$/.test(path)), repo.requests.join(" "))
    const done = await setupEvents()
    assert.deepStrictEqual(done.slice(3), ["setup 1/3 ok", "setup 2/3 ok", "setup 3/3 ok"])

    // Recorded as done: a later start does not run it again, and the package is on the disk.
    assert.strictEqual((await ma(["halt", "aptly"])).code, 0)
    const asked = repo.requests.length
    const again = await ma(["start", "aptly"])
    assert.strictEqual(again.code, 0, again.stderr)
    assert.strictEqual(await hello(), "Hello, world!\nStatus: install ok installed\n")
    assert.deepStrictEqual(await setupEvents(), done)
    assert.strictEqual(repo.requests.length, asked)
  })
})

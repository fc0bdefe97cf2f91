/**
 * Snapshots on real QEMU microVMs through the CLI: a running workspace is captured (memory, device
 * state, disk) and goes on running with its in-memory state intact; a halted one gives a disk-only
 * snapshot; tags conflict, delete removes; a workspace's secrets are wiped before a memory capture;
 * kill -9 of the runtime mid-capture publishes nothing and leaves the VM running, not paused.
 * One booted workspace is shared by the file (the machine is slow).
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { userNicMac } from "../../src/domain/Addressing.ts"
import { defaultImage } from "../../src/layers/image/BuiltinImages.ts"
import { binPath, cliAsync, type CliResult, errorOf, stopRuntime } from "../support/cli.ts"
import { qemuProcessesMentioning } from "../support/kernel.ts"
import { freePort, requireTool } from "../support/registry.ts"

let stateDir: string
let faultDir: string

const env = { MICROAGENT_BACKEND: "qemu" }
const ma = (args: ReadonlyArray<string>, extraEnv: Record<string, string> = {}): Promise<CliResult> =>
  cliAsync(args, { stateDir, env: { ...env, ...extraEnv } })

const ok = async (args: ReadonlyArray<string>, extraEnv: Record<string, string> = {}) => {
  const result = await ma(args, extraEnv)
  assert.strictEqual(result.code, 0, `${args.join(" ")}: ${result.stderr}`)
  return result
}
const json = (result: CliResult) => {
  assert.isAbove(result.stdout.length, 0, `no output; exit ${result.code}; stderr: ${result.stderr}`)
  return JSON.parse(result.stdout)
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
const waitFor = async (what: string, condition: () => boolean, timeoutMs = 120_000) => {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

/** The IPv6 link-local address (EUI-64) the kernel derives from a MAC, as `ip` prints it. */
const linkLocalOf = (mac: string) => {
  const b = mac.split(":").map((x) => Number.parseInt(x, 16))
  const bytes = [b[0]! ^ 0x02, b[1]!, b[2]!, 0xff, 0xfe, b[3]!, b[4]!, b[5]!]
  const groups = [0, 2, 4, 6].map((i) => ((bytes[i]! << 8) | bytes[i + 1]!).toString(16))
  return `fe80::${groups.join(":")}/64`
}

const snapshotsDir = (name: string) => NodePath.join(stateDir, "workspaces", name, "snapshots")
const entries = (name: string) => {
  try {
    return NodeFs.readdirSync(snapshotsDir(name)).sort()
  } catch {
    return []
  }
}

const runtimePid = (): number | undefined => {
  try {
    const pid = Number(
      NodeFs.readFileSync(NodePath.join(stateDir, "run", "runtime.pid"), "utf8").split(" ")[0]
    )
    process.kill(pid, 0)
    return pid
  } catch {
    return undefined
  }
}

/**
 * Runs the CLI with `step` armed on a runtime of its own, kills that runtime with SIGKILL once the
 * command has paused there, and answers the command's exit code.
 */
const runtimeKilledAt = async (step: string, args: ReadonlyArray<string>) => {
  stopRuntime(stateDir)
  await waitFor("the runtime to exit", () => runtimePid() === undefined, 30_000)
  const child = NodeChild.spawn(process.execPath, [binPath, ...args], {
    env: {
      ...process.env,
      ...env,
      MICROAGENT_HOME: stateDir,
      MICROAGENT_FAULT_PAUSE: step,
      MICROAGENT_FAULT_DIR: faultDir,
      NO_COLOR: "1"
    },
    stdio: ["ignore", "ignore", "ignore"]
  })
  const done = new Promise<number>((resolve) => child.on("close", (code) => resolve(code ?? -1)))
  const marker = NodePath.join(faultDir, step)
  await waitFor(`${args.join(" ")} to reach ${step}`, () => NodeFs.existsSync(marker))
  const pid = runtimePid()
  assert.isDefined(pid)
  process.kill(pid!, "SIGKILL")
  NodeFs.rmSync(marker, { force: true })
  return done
}

const MiB = 1024 * 1024

/** The bases of copy-on-write disks in the state directory. */
const bases = () => {
  try {
    return NodeFs.readdirSync(NodePath.join(stateDir, "bases")).filter((name) => name.endsWith(".ext4"))
  } catch {
    return []
  }
}

/** The base w's rolled-back disk stands on (a roll back shares the snapshot's disk like a fork). */
let rolledBackBase: ReadonlyArray<string> = []
/** The bases of forks' children: all but w's own. */
const forkBases = () => bases().filter((name) => !rolledBackBase.includes(name))

/** Bytes a file occupies on the host. */
const allocated = (path: string) => NodeFs.statSync(path).blocks * 512

beforeAll(async () => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("qemu-img", "qemu-utils")
  requireTool("mke2fs", "e2fsprogs")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-snap-"))
  faultDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-snap-fault-"))
  await ok(["create", "--image", defaultImage, "w"])
  await ok(["start", "w"])
}, 600_000)

afterAll(() => {
  stopRuntime(stateDir)
  for (const pid of qemuProcessesMentioning(`${stateDir}/`)) process.kill(pid, "SIGKILL")
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
  NodeFs.rmSync(faultDir, { recursive: true, force: true })
})

describe("snapshots on real microVMs", () => {
  it("captures a running workspace, which runs on with its memory state", async () => {
    // State only in memory: a tmpfs file and a process counting in it.
    await ok([
      "exec",
      "w",
      "--",
      "sh",
      "-c",
      "mkdir -p /run/s && echo 41 > /run/s/counter && echo old > /root/disk-file"
    ])
    await ok([
      "exec",
      "w",
      "--",
      "sh",
      "-c",
      "(while :; do sleep 1; done) >/dev/null 2>&1 & echo $! > /run/s/pid"
    ])
    const manifest = json(await ok(["snapshot", "create", "w", "--tag", "one", "--json"]))
    assert.strictEqual(manifest.tag, "one")
    assert.strictEqual(manifest.kind, "memory")
    assert.strictEqual(manifest.sourceState, "running")
    assert.strictEqual(manifest.secretsPurged, true)
    assert.match(manifest.kernelSha256, /^[0-9a-f]{64}$/)
    assert.strictEqual(manifest.resources.memoryMiB > 0, true)
    const dir = NodePath.join(snapshotsDir("w"), "one")
    assert.deepStrictEqual(NodeFs.readdirSync(dir).sort(), [
      "disk.ext4",
      "manifest.json",
      "vm.state",
      "vm.state.console",
      "vm.state.mem"
    ])
    assert.deepInclude(manifest.files, { state: "vm.state", memory: "vm.state.mem" })
    const state = NodeFs.statSync(NodePath.join(dir, "vm.state"))
    assert.strictEqual(state.size, manifest.stateBytes)
    // Device state only: the guest's RAM is the memory file, as large as the guest's memory, sparse.
    assert.isBelow(state.size, 4 * 1024 * 1024, "the stream holds no RAM")
    assert.strictEqual(state.mode & 0o777, 0o600)
    const memory = NodeFs.statSync(NodePath.join(dir, "vm.state.mem"))
    assert.strictEqual(memory.size, manifest.resources.memoryMiB * 1024 * 1024)
    assert.strictEqual(memory.size, manifest.memoryBytes)
    assert.isAbove(memory.blocks * 512, 1024 * 1024, "the memory file holds what the guest touched")
    assert.isBelow(memory.blocks * 512, memory.size, "untouched pages are holes")
    assert.strictEqual(memory.mode & 0o777, 0o600)
    assert.strictEqual(NodeFs.statSync(dir).mode & 0o777, 0o700)
    // Sparse: the copy stores fewer bytes than its size.
    assert.isBelow(NodeFs.statSync(NodePath.join(dir, "disk.ext4")).blocks * 512, manifest.diskBytes)
    // The QEMU stream starts with its magic "QEVM".
    const head = Buffer.alloc(4)
    const fd = NodeFs.openSync(NodePath.join(dir, "vm.state"), "r")
    NodeFs.readSync(fd, head, 0, 4, 0)
    NodeFs.closeSync(fd)
    assert.strictEqual(head.toString("latin1"), "QEVM")

    // Resumed: running, same memory state, the background process alive.
    const inspected = json(await ok(["inspect", "w", "--json"]))
    assert.strictEqual(inspected.workspace.state, "running")
    const after = await ok([
      "exec",
      "w",
      "--",
      "sh",
      "-c",
      "cat /run/s/counter; kill -0 $(cat /run/s/pid) && echo alive"
    ])
    assert.include(after.stdout, "41")
    assert.include(after.stdout, "alive")
  }, 300_000)

  it("lists, refuses a taken tag or a bad one, and deletes", async () => {
    const listed = json(await ok(["snapshot", "list", "w", "--json"]))
    assert.deepStrictEqual(listed.map((m: { tag: string }) => m.tag), ["one"])
    const taken = await ma(["snapshot", "create", "w", "--tag", "one", "--json"])
    assert.notStrictEqual(taken.code, 0)
    assert.strictEqual(errorOf(taken).error.kind, "conflict")
    const bad = await ma(["snapshot", "create", "w", "--tag", "../x", "--json"])
    assert.notStrictEqual(bad.code, 0)
    const missing = await ma(["snapshot", "delete", "w", "nope", "--json"])
    assert.strictEqual(errorOf(missing).error.kind, "not_found")
    await ok(["snapshot", "create", "w", "--tag", "two"])
    const deleted = json(await ok(["snapshot", "delete", "w", "two", "--json"]))
    assert.strictEqual(deleted.deleted, true)
    assert.deepStrictEqual(entries("w"), ["one"])
  }, 300_000)

  it("kill -9 of the runtime mid-capture publishes nothing and leaves the VM running", async () => {
    assert.notStrictEqual(
      await runtimeKilledAt("snapshot.capturing", ["snapshot", "create", "w", "--tag", "crash"]),
      0
    )
    // Nothing published; the staging directory is swept by the next reader.
    assert.deepStrictEqual(
      json(await ok(["snapshot", "list", "w", "--json"])).map((m: { tag: string }) => m.tag),
      [
        "one"
      ]
    )
    assert.deepStrictEqual(entries("w"), ["one"])
    // The VM was paused by the capture; the next reader resumes it.
    const inspected = json(await ok(["inspect", "w", "--json"]))
    assert.strictEqual(inspected.workspace.state, "running")
    const result = await ok(["exec", "w", "--", "cat", "/run/s/counter"])
    assert.include(result.stdout, "41")
  }, 300_000)

  it(
    "start --from-snapshot resumes the captured memory: processes, tmpfs, disk, and the host's clock",
    async () => {
      // Changed after the capture, in memory and on disk.
      await ok([
        "exec",
        "w",
        "--",
        "sh",
        "-c",
        "echo 99 > /run/s/counter && echo new > /root/disk-file && sync"
      ])
      await ok(["halt", "w"])
      // The guest's clock stood still since the capture; make sure the gap is worth stepping.
      const captured = Date.parse(json(await ok(["snapshot", "list", "w", "--json"]))[0].createdAt)
      if (Date.now() - captured < 10_000) await sleep(10_000 - (Date.now() - captured))
      const started = json(await ok(["start", "w", "--from-snapshot", "one", "--json"]))
      assert.strictEqual(started.state, "running")
      // The disk shares the snapshot's blocks instead of copying them: an overlay over a base (which
      // outlives the snapshot, as a fork's children's does), and nothing pending is left beside it.
      const dir = NodePath.join(stateDir, "workspaces", "w")
      assert.isTrue(
        NodeFs.existsSync(NodePath.join(dir, "rootfs.qcow2")),
        "the rolled-back disk is an overlay"
      )
      assert.isFalse(NodeFs.existsSync(NodePath.join(dir, "rootfs")), "the previous raw disk is gone")
      assert.deepStrictEqual(NodeFs.readdirSync(dir).filter((name) => name.startsWith(".rootfs.")), [])
      rolledBackBase = bases()
      assert.strictEqual(rolledBackBase.length, 1, rolledBackBase.join(","))
      const result = await ok([
        "exec",
        "w",
        "--",
        "sh",
        "-c",
        "cat /run/s/counter /root/disk-file; kill -0 $(cat /run/s/pid) && echo alive; date +%s"
      ])
      const hostNow = Date.now() / 1000
      const [counter, disk, alive, guestNow] = json(result).result.stdout.trim().split("\n")
      assert.strictEqual(counter, "41", "the tmpfs is the captured one")
      assert.strictEqual(disk, "old", "the disk is the captured one")
      assert.strictEqual(alive, "alive", "a process started before the capture runs on")
      assert.isBelow(Math.abs(Number(guestNow) - hostNow), 5, `guest clock ${guestNow}, host ${hostNow}`)
      const log = json(await ok(["events", "w", "--json"]))
      const restored = (log.events as Array<{ type: string; detail?: string }>).filter((e) =>
        e.type === "snapshot" && e.detail?.startsWith("restored one")
      )
      assert.strictEqual(restored.length, 1)
      assert.include(restored[0]!.detail, "clock set, rng reseeded")
      // A tag that does not exist, or another workspace's, is refused and the workspace keeps running.
      const unknown = await ma(["start", "w", "--from-snapshot", "nope", "--json"])
      assert.strictEqual(errorOf(unknown).error.kind, "not_found")
      assert.strictEqual(json(await ok(["inspect", "w", "--json"])).workspace.state, "running")
    },
    300_000
  )

  it("fork makes running children that resume the parent's memory, each under its own name", async () => {
    // The image has no machine-id; give the parent one, so the children's new ones can be told apart.
    const parentId = "0123456789abcdef0123456789abcdef"
    const parentInode = json(
      await ok([
        "exec",
        "w",
        "--",
        "sh",
        "-c",
        `echo ${parentId} > /etc/machine-id && stat -c %i /etc/machine-id`
      ])
    ).result.stdout.trim()
    // The parent has talked to its gateway: its ARP cache holds the gateway's MAC when it is captured.
    const netOf = "cat /sys/class/net/eth0/address; ip -4 -o addr show dev eth0 | awk '{print $4}'; "
      + "ip -6 addr show dev eth0 | awk '/inet6 fe80/ {print $2}'; nc -w 3 10.0.2.2 9 </dev/null && echo reached"
    const parentNet = json(await ok(["exec", "w", "--", "sh", "-c", netOf])).result.stdout.trim().split("\n")
    assert.deepStrictEqual(parentNet, [
      userNicMac("w"),
      "10.0.2.15/24",
      linkLocalOf(userNicMac("w")),
      "reached"
    ])
    // 16 MiB on the parent's disk, which its children share rather than copy.
    await ok([
      "exec",
      "w",
      "--",
      "sh",
      "-c",
      "dd if=/dev/urandom of=/root/blob bs=1M count=16 2>/dev/null; sync"
    ])
    const forked = json(await ok(["fork", "w", "--count", "2", "--name-prefix", "kid", "--json"]))
    assert.strictEqual(forked.source, "w")
    assert.deepStrictEqual(
      forked.children.map((c: { name: string; state: string }) => [c.name, c.state]),
      [["kid-1", "running"], ["kid-2", "running"]]
    )
    // Each child's disk is a qcow2 overlay over one shared base (this filesystem cannot reflink): it
    // holds what the child wrote, not the parent's 16 MiB.
    assert.strictEqual(forkBases().length, 1, forkBases().join(","))
    assert.isAbove(allocated(NodePath.join(stateDir, "bases", forkBases()[0]!)), 16 * MiB)
    for (const child of ["kid-1", "kid-2"]) {
      assert.isFalse(NodeFs.existsSync(NodePath.join(stateDir, "workspaces", child, "rootfs")), child)
      assert.isBelow(allocated(NodePath.join(stateDir, "workspaces", child, "rootfs.qcow2")), 4 * MiB, child)
    }
    assert.strictEqual(
      json(await ok(["inspect", "w", "--json"])).workspace.state,
      "running",
      "the parent runs on"
    )
    const outputs = await Promise.all(
      ["kid-1", "kid-2"].map((name) =>
        ok([
          "exec",
          name,
          "--",
          "sh",
          "-c",
          "hostname; cat /run/s/counter; kill -0 $(cat /run/s/pid) && echo alive; echo $$ > /run/s/mine; cat /run/s/mine; "
          + "cat /etc/hostname /etc/machine-id; stat -c %i /etc/machine-id; cat /proc/sys/kernel/random/uuid"
        ])
      )
    )
    const [one, two] = outputs.map((out) => json(out).result.stdout.trim().split("\n"))
    assert.deepStrictEqual(one!.slice(0, 3), ["kid-1", "41", "alive"])
    assert.deepStrictEqual(two!.slice(0, 3), ["kid-2", "41", "alive"])
    // Each child got its identity from the agent's FRESHEN: /etc/hostname, a new machine-id from its own
    // (reseeded) RNG, written as a new file renamed over the old one, and random numbers of its own.
    for (const [name, lines] of [["kid-1", one!], ["kid-2", two!]] as const) {
      const [etcHostname, machineId, inode] = lines.slice(4, 7)
      assert.strictEqual(etcHostname, name)
      assert.match(machineId!, /^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$/, name)
      assert.notStrictEqual(machineId, parentId, name)
      assert.notStrictEqual(inode, parentInode, `${name}: /etc/machine-id replaced, not rewritten in place`)
    }
    assert.notStrictEqual(one![5], two![5], "the children's machine-ids differ")
    assert.match(one![7]!, /^[0-9a-f-]{36}$/)
    assert.notStrictEqual(one![7], two![7], "the children's random numbers differ")
    // Each child has its own MAC and address from its first moment, and reaches its gateway at once
    // (a stale ARP entry for the parent's gateway would time out).
    for (const [i, name] of ["kid-1", "kid-2"].entries()) {
      const net = json(await ok(["exec", name, "--", "sh", "-c", netOf]))
      // Its IPv6 link-local address too, derived from its own MAC rather than kept from the parent's.
      assert.deepStrictEqual(net.result.stdout.trim().split("\n"), [
        userNicMac(name),
        `10.0.2.${16 + i}/24`,
        linkLocalOf(userNicMac(name)),
        "reached"
      ])
      assert.strictEqual(
        json(await ok(["inspect", name, "--json"])).workspace.addressing.ip,
        `10.0.2.${16 + i}/24`,
        name
      )
    }
    // Each child's memory is its own from the fork on.
    const parent = json(await ok(["exec", "w", "--", "sh", "-c", "cat /run/s/mine 2>/dev/null || echo none"]))
    assert.strictEqual(parent.result.stdout.trim(), "none")
    // The capture it was made from is gone; a name taken refuses the whole fork.
    assert.isFalse(entries("w").some((tag) => tag.startsWith("fork-")), entries("w").join(","))
    const taken = await ma(["fork", "w", "--name-prefix", "kid", "--json"])
    assert.strictEqual(errorOf(taken).error.kind, "conflict")
    await Promise.all([ok(["delete", "--force", "kid-1"]), ok(["delete", "--force", "kid-2"])])
    // The base goes with the last overlay that named it.
    assert.deepStrictEqual(forkBases(), [])
  }, 300_000)

  it(
    "flattens a child's overlay for offline work on its disk, and keeps the others on the base",
    async () => {
      await ok(["fork", "w", "--count", "2", "--name-prefix", "flat"])
      await ok(["exec", "flat-1", "--", "sh", "-c", "echo mine > /root/flat.txt; sync"])
      await ok(["halt", "flat-1"])
      const dir = NodePath.join(stateDir, "workspaces", "flat-1")
      assert.isTrue(NodeFs.existsSync(NodePath.join(dir, "rootfs.qcow2")), "a halted child keeps its overlay")
      // An offline cp needs raw ext4: the overlay becomes the child's own disk, once.
      const file = NodePath.join(faultDir, "offline.txt")
      NodeFs.writeFileSync(file, "offline\n")
      await ok(["cp", file, "flat-1:/root/offline.txt"])
      assert.isTrue(NodeFs.existsSync(NodePath.join(dir, "rootfs")))
      assert.isFalse(NodeFs.existsSync(NodePath.join(dir, "rootfs.qcow2")))
      assert.strictEqual(forkBases().length, 1, "flat-2 still uses the base")
      await ok(["start", "flat-1"])
      const read = json(await ok(["exec", "flat-1", "--", "cat", "/root/flat.txt", "/root/offline.txt"]))
      assert.deepStrictEqual(read.result.stdout.trim().split("\n"), ["mine", "offline"])
      const other = json(
        await ok(["exec", "flat-2", "--", "sh", "-c", "cat /root/flat.txt 2>/dev/null || echo none"])
      )
      assert.strictEqual(other.result.stdout.trim(), "none")
      await ok(["delete", "--force", "flat-2"])
      assert.deepStrictEqual(forkBases(), [])
      await ok(["delete", "--force", "flat-1"])
    },
    300_000
  )

  it("gives a fork's children host ports of their own for the parent's published ports", async () => {
    const port = await freePort()
    await ok(["create", "--image", defaultImage, "-p", `127.0.0.1:${port}:8080`, "web"])
    await ok(["start", "web"])
    const serve = "mkdir -p /www && hostname > /www/index.html && httpd -p 8080 -h /www"
    await ok(["exec", "web", "--", "sh", "-c", serve])
    const page = async (hostPort: number) => {
      const response = await fetch(`http://127.0.0.1:${hostPort}/`, { signal: AbortSignal.timeout(10_000) })
      return (await response.text()).trim()
    }
    assert.strictEqual(await page(port), "web")
    const forked = json(await ok(["fork", "web", "--count", "2", "--name-prefix", "web", "--json"]))
    const children = forked.children as Array<
      { name: string; ports: Array<{ hostPort: number; guestPort: number }> }
    >
    const hostPorts = children.map((c) => c.ports[0]!.hostPort)
    assert.deepStrictEqual(children.map((c) => c.ports[0]!.guestPort), [8080, 8080])
    assert.strictEqual(new Set([port, ...hostPorts]).size, 3, `host ports ${port}, ${hostPorts.join(", ")}`)
    // The server the parent started runs on in each child; each child now serves a page of its own.
    for (const [i, child] of children.entries()) {
      await ok(["exec", child.name, "--", "sh", "-c", "hostname > /www/index.html"])
      assert.strictEqual(await page(hostPorts[i]!), child.name)
    }
    assert.strictEqual(await page(port), "web")
    await Promise.all(["web", "web-1", "web-2"].map((name) => ok(["delete", "--force", name])))
  }, 300_000)

  it(
    "kill -9 of the runtime mid-fork: the next runtime undoes the fork, children, VMs and capture",
    async () => {
      assert.notStrictEqual(
        await runtimeKilledAt("fork.child-started", ["fork", "w", "--count", "2", "--name-prefix", "cut"]),
        0
      )
      assert.isTrue(entries("w").some((tag) => tag.startsWith("fork-")), "the capture was left")
      // The next runtime (started by a command it serves) undoes the fork whole, as the fork would have.
      const result = await ok(["exec", "w", "--", "echo", "parent"])
      assert.include(result.stdout, "parent")
      const names = async () =>
        json(await ok(["list", "--json"])).workspaces.map((ws: { name: string }) => ws.name)
      for (let i = 0; i < 150 && (await names()).some((n: string) => n.startsWith("cut-")); i++) {
        await sleep(
          200
        )
      }
      assert.deepStrictEqual((await names()).filter((n: string) => n.startsWith("cut-")), [])
      await waitFor("the capture to go", () => !entries("w").some((tag) => tag.startsWith("fork-")), 30_000)
      assert.deepStrictEqual(qemuProcessesMentioning(`${stateDir}/run/cut-`), [], "no child's VMM is left")
      await waitFor("the children's base to go", () => forkBases().length === 0, 30_000)
    },
    300_000
  )

  it("gives a halted workspace a disk-only snapshot", async () => {
    await ok(["halt", "w"])
    const manifest = json(await ok(["snapshot", "create", "w", "--tag", "cold", "--json"]))
    assert.strictEqual(manifest.kind, "disk")
    assert.strictEqual(manifest.sourceState, "halted")
    assert.isUndefined(manifest.files.state)
    assert.deepStrictEqual(NodeFs.readdirSync(NodePath.join(snapshotsDir("w"), "cold")).sort(), [
      "disk.ext4",
      "manifest.json"
    ])
  }, 300_000)

  it(
    "clone boots a copy of the disk; create --from-snapshot resumes the captured VM; each its own hostname",
    async () => {
      const copy = json(await ok(["clone", "w", "wc", "--json"]))
      assert.strictEqual(copy.workspace.hostname, "wc")
      const fromSnapshot = json(await ok(["create", "ws", "--from-snapshot", "w:one", "--json"]))
      assert.strictEqual(fromSnapshot.snapshot, "one")
      assert.strictEqual(fromSnapshot.firstStart, "resume")
      // A running source cannot be cloned; a reference without a tag is not one.
      await Promise.all([ok(["start", "wc"]), ok(["start", "ws"])])
      const running = await ma(["clone", "wc", "wd", "--json"])
      assert.strictEqual(errorOf(running).error.kind, "conflict")
      const bad = await ma(["create", "wd", "--from-snapshot", "w", "--json"])
      assert.strictEqual(errorOf(bad).error.kind, "permanent")
      const [cloned, created] = await Promise.all(
        ["wc", "ws"].map((name) =>
          ok([
            "exec",
            name,
            "--",
            "sh",
            "-c",
            "hostname; cat /root/disk-file; cat /run/s/counter 2>/dev/null || echo cold; "
            + "kill -0 $(cat /run/s/pid 2>/dev/null) 2>/dev/null && echo alive || echo none"
          ])
        )
      )
      // The clone has the halted workspace's disk (rolled back to "old") and boots cold; the copy of the
      // memory snapshot resumes the captured VM under its own hostname: its tmpfs and the process
      // started before the capture are there.
      assert.deepStrictEqual(json(cloned!).result.stdout.trim().split("\n"), ["wc", "old", "cold", "none"])
      assert.deepStrictEqual(json(created!).result.stdout.trim().split("\n"), ["ws", "old", "41", "alive"])
      await Promise.all([ok(["delete", "--force", "wc"]), ok(["delete", "--force", "ws"])])
    },
    300_000
  )

  it(
    "a memory capture wipes the secrets first: no snapshot file holds them, the workspace and a resumed copy read them again; forensic keeps them and is never restored",
    async () => {
      const value = "s3cr3t-value-for-snapshot"
      await ok(["start", "w", "--secret", "TOKEN=env:SNAP_TOKEN"], { SNAP_TOKEN: value })
      const captured = json(
        await ok(["snapshot", "create", "w", "--tag", "secret", "--json"], { SNAP_TOKEN: value })
      )
      assert.deepInclude(captured, { kind: "memory", secretsPurged: true })
      // No snapshot file holds the value.
      for (const tag of entries("w")) {
        for (const file of NodeFs.readdirSync(NodePath.join(snapshotsDir("w"), tag))) {
          const bytes = NodeFs.readFileSync(NodePath.join(snapshotsDir("w"), tag, file))
          assert.strictEqual(bytes.includes(value), false, `${tag}/${file}`)
        }
      }
      const read = "cat /run/secrets/TOKEN; echo; ls /run/secrets"
      const again = json(await ok(["exec", "w", "--", "sh", "-c", read]))
      assert.deepStrictEqual(again.result.stdout.trim().split("\n"), [value, "TOKEN"])
      // A copy resumes the capture and gets the secret delivered by its start.
      await ok(["create", "wsec", "--from-snapshot", "w:secret"])
      await ok(["start", "wsec"], { SNAP_TOKEN: value })
      const copied = json(await ok(["exec", "wsec", "--", "sh", "-c", read]))
      assert.deepStrictEqual(copied.result.stdout.trim().split("\n"), [value, "TOKEN"])
      await ok(["delete", "--force", "wsec"])
      await ok(["snapshot", "delete", "w", "secret"])
      // Each child of a fork reads the secret (delivered by its start); the parent keeps it.
      const forked = json(
        await ok(["fork", "w", "--count", "2", "--name-prefix", "sec", "--json"], { SNAP_TOKEN: value })
      )
      for (const child of forked.children as Array<{ name: string }>) {
        const got = json(await ok(["exec", child.name, "--", "sh", "-c", read]))
        assert.deepStrictEqual(got.result.stdout.trim().split("\n"), [value, "TOKEN"], child.name)
        await ok(["delete", "--force", child.name])
      }
      assert.strictEqual(
        json(await ok(["exec", "w", "--", "cat", "/run/secrets/TOKEN"])).result.stdout,
        value
      )

      // A forensic capture keeps everything, the secret in memory included, and is never restored.
      const forensic = json(await ok(["snapshot", "create", "w", "--forensic", "--json"]))
      assert.match(forensic.tag, /^forensic-\d{8}T\d{6}Z$/)
      assert.deepInclude(forensic, { kind: "memory", forensic: true, secretsPurged: false })
      const memory = NodeFs.readFileSync(
        NodePath.join(snapshotsDir("w"), forensic.tag, forensic.files.memory)
      )
      assert.isTrue(
        memory.includes("s3cr3t-value-for-snapshot"),
        "the forensic memory holds the guest's tmpfs"
      )
      const rollback = await ma(["start", "w", "--from-snapshot", forensic.tag, "--json"], {
        SNAP_TOKEN: "s3cr3t-value-for-snapshot"
      })
      assert.strictEqual(errorOf(rollback).error.kind, "conflict", errorOf(rollback).error.message)
      assert.include(errorOf(rollback).error.message, "is forensic")
      const copy = await ma(["create", "wf", "--from-snapshot", `w:${forensic.tag}`, "--json"])
      assert.strictEqual(errorOf(copy).error.kind, "conflict", errorOf(copy).error.message)
      assert.strictEqual((await ma(["inspect", "wf"])).code, 1)
    },
    300_000
  )
})

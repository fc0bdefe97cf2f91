/**
 * Crash consistency on real QEMU microVMs: kill -9 of the CLI, the runtime or the VMM at named steps
 * of each lifecycle operation, then the recovery rules of docs/architecture.md ("Crash recovery")
 * are checked: within 10 s and at most one `gc`, no VMM without a live record, no live record without
 * a VMM, nothing left on the host (staging, temp files, loop devices, mounts, namespaces, taps),
 * volume claims released, and the workspace usable again.
 *
 * Kill points are deterministic: the test arms a step in its fault directory's `armed` file (see
 * src/layers/process/FaultPoint.ts); the process that reaches it writes its pid and waits, the test
 * disarms the step, kills what the case names, then lets the survivors carry on. A runtime that
 * outlives a case serves the next one.
 */
import Sqlite from "better-sqlite3"
import * as NodeChild from "node:child_process"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodeHttp from "node:http"
import type * as NodeNet from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { busyboxConfig, busyboxLayers, defaultImage } from "../../src/layers/image/BuiltinImages.ts"
import { writeOciLayout } from "../../src/layers/image/OciWriter.ts"
import { namespacePrefix, stateTag } from "../../src/layers/network/Addressing.ts"
import { fabricProblem } from "../../src/layers/network/Fabric.ts"
import { cliAsync, cliProcess, type CliResult, stopRuntime } from "../support/cli.ts"
import { qemuProcessesMentioning } from "../support/kernel.ts"
import { requireTool } from "../support/registry.ts"

type Victim = "cli" | "runtime" | "vmm"
type Step =
  | "create.recorded"
  | "vmm.booting"
  | "exec.connected"
  | "halt.stopping"
  | "delete.files-removed"
  | "cp.reached"

let stateDir: string
let faultDir: string
let scratch: string

const env = (step?: Step): Record<string, string> => ({
  MICROAGENT_BACKEND: "qemu",
  MICROAGENT_FAULT_DIR: faultDir,
  ...(step === undefined ? {} : { MICROAGENT_FAULT_PAUSE: step })
})

const ma = (args: ReadonlyArray<string>): Promise<CliResult> => cliAsync(args, { stateDir, env: env() })

const json = (result: CliResult) => {
  assert.isAbove(result.stdout.length, 0, `no output; exit ${result.code}; stderr: ${result.stderr}`)
  return JSON.parse(result.stdout)
}

const ok = async (args: ReadonlyArray<string>) => {
  const result = await ma(args)
  assert.strictEqual(result.code, 0, `${args.join(" ")}: ${result.stderr}`)
  return result
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

const waitFor = async (what: string, condition: () => boolean, timeoutMs = 60_000) => {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

const alive = (pid: number) => {
  try {
    const stat = NodeFs.readFileSync(`/proc/${pid}/stat`, "utf8")
    return !/^\S+ \(.*\) [ZX]/.test(stat)
  } catch {
    return false
  }
}

const runtimePid = (): number | undefined => {
  try {
    const pid = Number(
      NodeFs.readFileSync(NodePath.join(stateDir, "run", "runtime.pid"), "utf8").split(" ")[0]
    )
    return alive(pid) ? pid : undefined
  } catch {
    return undefined
  }
}

/** Stops the runtime and waits for it to go, so the next command starts one with its own environment. */
const freshRuntime = async () => {
  const pid = runtimePid()
  if (pid !== undefined) stopRuntime(stateDir)
  // One a caller started and that has not written its pid file yet goes too.
  const starting = NodeChild.spawnSync("pgrep", ["-f", `runtime.* --state-dir ${stateDir}$`], {
    encoding: "utf8"
  })
    .stdout.split("\n").filter((line) => line !== "").map(Number).filter((p) => p !== pid)
  for (const p of starting) process.kill(p, "SIGTERM")
  await waitFor(
    "the runtime to exit",
    () => [pid, ...starting].every((p) => p === undefined || !alive(p)),
    30_000
  )
}

const qemuProcesses = () => qemuProcessesMentioning(`${stateDir}/`)

/** A CLI command started with a step armed; its pid is at hand to kill it. */
const armed = (args: ReadonlyArray<string>, step: Step) => {
  const { child, output, result } = cliProcess(args, {
    stateDir,
    env: { MICROAGENT_RUNTIME_IDLE_SECONDS: "2", ...env(step) }
  })
  return { pid: child.pid!, done: result, output }
}

const marker = (step: Step) => NodePath.join(faultDir, step)

/**
 * Runs `args` with `step` armed, kills `victim` once a process paused there, lets the others go on,
 * and returns what the command said.
 */
const crashAt = async (args: ReadonlyArray<string>, step: Step, victim: Victim, workspace: string) => {
  const armedFile = NodePath.join(faultDir, "armed")
  NodeFs.writeFileSync(armedFile, `${step}\n`)
  const started = cliProcess(args, { stateDir, env: env() })
  const command = { pid: started.child.pid!, done: started.result }
  await waitFor(`${args.join(" ")} to reach ${step}`, () => NodeFs.existsSync(marker(step)))
  // Disarmed before anything carries on: a retry or the next command must not pause again.
  NodeFs.rmSync(armedFile, { force: true })
  const paused = Number(NodeFs.readFileSync(marker(step), "utf8").trim())
  if (victim === "cli") process.kill(command.pid, "SIGKILL")
  if (victim === "runtime") {
    const pid = runtimePid()
    assert.isDefined(pid, "a runtime serves the command")
    process.kill(pid!, "SIGKILL")
  }
  if (victim === "vmm") {
    const vmms = qemuProcessesMentioning(`${stateDir}/run/${workspace}/`)
    assert.strictEqual(vmms.length, 1, `one VMM of ${workspace} runs`)
    process.kill(vmms[0]!, "SIGKILL")
  }
  // The paused process, if it lives, carries on.
  NodeFs.rmSync(marker(step), { force: true })
  const result = await command.done
  return { result, paused }
}

interface Recorded {
  readonly name: string
  readonly state: string
  readonly vmPid: number | undefined
}

const live = ["starting", "running", "paused", "stopping"]

/** The store as it stands once `list` has reconciled every record with its VMM. */
const store = async () => {
  await ok(["list"])
  const db = new Sqlite(NodePath.join(stateDir, "state.db"), { readonly: true, fileMustExist: true })
  try {
    const workspaces = (db.prepare("SELECT name, state, record FROM workspaces").all() as Array<
      { name: string; state: string; record: string }
    >).map((row): Recorded => ({
      name: row.name,
      state: row.state,
      vmPid: (JSON.parse(row.record) as { vm?: { pid?: number } }).vm?.pid
    }))
    const holders = db.prepare(
      "SELECT name, attached_to AS holder FROM volumes WHERE attached_to IS NOT NULL"
    )
      .all() as Array<{ name: string; holder: string }>
    const readers = db.prepare("SELECT volume AS name, workspace AS holder FROM volume_readers")
      .all() as Array<
        { name: string; holder: string }
      >
    const members = db.prepare("SELECT network, workspace FROM network_members").all() as Array<
      { network: string; workspace: string }
    >
    return { workspaces, claims: [...holders, ...readers], members }
  } finally {
    db.close()
  }
}

const lines = (command: string, args: ReadonlyArray<string>) => {
  const result = NodeChild.spawnSync(command, [...args], { encoding: "utf8" })
  return (result.stdout ?? "").split("\n").filter((l) => l.length > 0)
}

/** Everything the recovery rules forbid, as readable problems; empty when all is well. */
const problems = async (): Promise<Array<string>> => {
  const found: Array<string> = []
  const { claims, members, workspaces } = await store()
  const isLive = (name: string) => live.includes(workspaces.find((w) => w.name === name)?.state ?? "")
  const vmms = qemuProcesses()
  for (const pid of vmms) {
    if (!workspaces.some((r) => live.includes(r.state) && r.vmPid === pid)) {
      found.push(`VMM ${pid} without a live record`)
    }
  }
  for (const r of workspaces) {
    if (live.includes(r.state) && (r.vmPid === undefined || !vmms.includes(r.vmPid))) {
      found.push(`${r.name} is ${r.state} without a VMM`)
    }
  }
  const staging = NodeFs.readdirSync(NodePath.join(stateDir, "workspaces")).filter((n) =>
    n.startsWith(".staging-")
  )
  if (staging.length > 0) found.push(`staging left: ${staging.join(", ")}`)
  const temp = NodeFs.readdirSync(NodePath.join(stateDir, "tmp"))
  if (temp.length > 0) found.push(`temp files left: ${temp.join(", ")}`)
  const loops = lines("losetup", ["-a"]).filter((l) => l.includes(stateDir))
  if (loops.length > 0) found.push(`loop devices: ${loops.join("; ")}`)
  const mounts = NodeFs.readFileSync("/proc/mounts", "utf8").split("\n").filter((l) => l.includes(stateDir))
  if (mounts.length > 0) found.push(`mounts: ${mounts.join("; ")}`)
  if (fabricProblem() === undefined) {
    const root = NodePath.resolve(stateDir)
    const needed = new Set(members.filter((m) => isLive(m.workspace)).map((m) => m.network))
    const namespaces = lines("ip", ["netns", "list"]).map((l) => l.split(" ")[0]!).filter((ns) =>
      ns.startsWith(namespacePrefix(root)) && !needed.has(ns.slice(namespacePrefix(root).length))
    )
    if (namespaces.length > 0) found.push(`namespaces: ${namespaces.join(", ")}`)
    const links = lines("ip", ["-o", "link"]).filter((l) => l.includes(stateTag(root)))
    if (!workspaces.some((w) => live.includes(w.state)) && links.length > 0) {
      found.push(`links: ${links.join("; ")}`)
    }
  }
  for (const claim of claims) {
    if (!isLive(claim.holder)) found.push(`volume ${claim.name} still claimed by ${claim.holder}`)
  }
  return found
}

/**
 * The recovery rule: within 10 s and at most one `gc`, no problem is left. Returns how it recovered,
 * or the problems that remain.
 */
const recovered = async (): Promise<{ readonly outcome: string; readonly problems: Array<string> }> => {
  const deadline = Date.now() + 10_000
  let left = await problems()
  if (left.length === 0) return { outcome: "clean", problems: [] }
  // The next runtime's reconcile may still be at work: one short look, then the one gc.
  await sleep(1000)
  left = await problems()
  if (left.length === 0) return { outcome: "clean", problems: [] }
  const gc = await ma(["gc"])
  if (gc.code !== 0) return { outcome: "gc failed", problems: [gc.stderr] }
  left = await problems()
  while (left.length > 0 && Date.now() < deadline) {
    await sleep(500)
    left = await problems()
  }
  return { outcome: left.length === 0 ? "clean after gc" : "FAILED", problems: left }
}

const matrix: Array<{ readonly operation: string; readonly victim: Victim; readonly outcome: string }> = []

/** Checks the rules after a crash, records the outcome, then checks the workspace is usable. */
const verdict = async (operation: string, victim: Victim, usable: () => Promise<void>) => {
  const { outcome, problems: left } = await recovered()
  let usableOutcome = "usable"
  try {
    if (left.length === 0) await usable()
  } catch (error) {
    usableOutcome = `NOT usable: ${String(error)}`
  }
  matrix.push({
    operation,
    victim,
    outcome: `${outcome}, ${usableOutcome}${left.length ? `: ${left.join("; ")}` : ""}`
  })
  assert.deepStrictEqual(left, [], `${operation} × kill -9 ${victim}`)
  assert.strictEqual(usableOutcome, "usable", `${operation} × kill -9 ${victim}`)
}

const stateOf = async (name: string) => json(await ok(["inspect", name])).workspace.state as string

/** Brings `name` to running (starting it if needed) and proves it answers. */
const running = async (name: string) => {
  if ((await stateOf(name)) !== "running") await ok(["start", name])
  const echoed = json(await ok(["exec", name, "--", "echo", "up"]))
  assert.strictEqual(echoed.result.stdout, "up\n")
}

beforeAll(async () => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("mke2fs", "e2fsprogs")
  requireTool("losetup", "mount")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-crash-"))
  faultDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-crash-faults-"))
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-crash-scratch-"))
  // The built-in image and the kernel, once: the cases' time is then the VMs'.
  await ok(["create", "--image", defaultImage, "w"])
}, 600_000)

afterAll(async () => {
  stopRuntime(stateDir)
  for (const pid of qemuProcesses()) process.kill(pid, "SIGKILL")
  if (matrix.length > 0) {
    const width = Math.max(...matrix.map((m) => m.operation.length))
    process.stdout.write(
      `\ncrash matrix (operation × kill -9 target → outcome)\n${
        matrix.map((m) => `  ${m.operation.padEnd(width)}  ${m.victim.padEnd(7)}  ${m.outcome}`).join("\n")
      }\n`
    )
  }
  for (const dir of [stateDir, faultDir, scratch]) NodeFs.rmSync(dir, { recursive: true, force: true })
})

describe("a VMM never outlives its record", () => {
  /**
   * `start w` killed with its runtime while QEMU boots: the record reads failed, QEMU still runs. A
   * boot (`--cold`): a warm start's template build is covered by test/e2e/warm.test.ts.
   */
  const orphaned = async () => {
    const { result } = await crashAt(["start", "--cold", "w"], "vmm.booting", "runtime", "w")
    assert.notStrictEqual(result.code, 0)
    assert.strictEqual(await stateOf("w"), "failed")
    const vmms = qemuProcessesMentioning(`${stateDir}/run/w/`)
    assert.strictEqual(vmms.length, 1, "the VMM outlived its runtime")
    return vmms[0]!
  }

  it("gc ends it", async () => {
    const vmm = await orphaned()
    const report = json(await ok(["gc"]))
    assert.deepStrictEqual(report.killed, [vmm])
    assert.deepStrictEqual(qemuProcesses(), [])
  })

  it("kill works from failed and ends it", async () => {
    await orphaned()
    const killed = json(await ok(["kill", "w"]))
    assert.strictEqual(killed.state, "stopped")
    await waitFor("the VMM to go", () => qemuProcesses().length === 0, 10_000)
  })

  it("delete --force ends it", async () => {
    await orphaned()
    assert.isTrue(json(await ok(["delete", "--force", "w"])).deleted)
    assert.deepStrictEqual(qemuProcesses(), [])
    await ok(["create", "--image", defaultImage, "w"])
  })

  it("the next runtime's reconcile ends it", async () => {
    const vmm = await orphaned()
    // Any command served by the runtime starts a new one; its first reconcile finds the orphan.
    await ma(["exec", "w", "--", "true"])
    await waitFor("the new runtime to end the orphan", () => !alive(vmm), 10_000)
    assert.deepStrictEqual(qemuProcesses(), [])
  })
})

describe("a runtime whose state directory is removed", () => {
  it("ends its VMMs and itself", async () => {
    const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-crash-removed-"))
    try {
      const local = (args: ReadonlyArray<string>) => cliAsync(args, { stateDir: dir, env: env() })
      assert.strictEqual((await local(["create", "--image", defaultImage, "doomed"])).code, 0)
      const started = await local(["start", "doomed"])
      assert.strictEqual(started.code, 0, started.stderr)
      const [vmm] = qemuProcessesMentioning(`${dir}/`)
      assert.isDefined(vmm)
      const runtime = Number(
        NodeFs.readFileSync(NodePath.join(dir, "run", "runtime.pid"), "utf8").split(" ")[0]
      )
      assert.isTrue(alive(runtime))
      NodeFs.rmSync(dir, { recursive: true, force: true })
      await waitFor("the VMM to be ended", () => !alive(vmm!), 20_000)
      await waitFor("the runtime to exit", () => !alive(runtime), 20_000)
    } finally {
      for (const pid of qemuProcessesMentioning(`${dir}/`)) process.kill(pid, "SIGKILL")
      NodeFs.rmSync(dir, { recursive: true, force: true })
    }
  })
})

describe("crash-consistency matrix", () => {
  const image = defaultImage
  const halted = async (name: string) => {
    const state = await stateOf(name)
    if (live.includes(state)) await ok(["kill", name])
  }
  const startable = async (name: string) => {
    await running(name)
  }
  const hostFile = () => {
    const file = NodePath.join(scratch, "payload.txt")
    NodeFs.writeFileSync(file, "payload\n")
    return file
  }
  const copiedBack = async (name: string) => {
    const out = NodePath.join(scratch, `back-${Date.now()}`)
    await ok(["cp", `${name}:/etc/hostname`, out])
    assert.isTrue(NodeFs.existsSync(out))
  }

  interface Case {
    readonly operation: string
    readonly victim: Victim
    readonly step: Step
    readonly workspace: string
    readonly before: () => Promise<void>
    readonly args: () => ReadonlyArray<string>
    readonly usable: () => Promise<void>
  }

  const cases: ReadonlyArray<Case> = [
    ...(["cli", "runtime", "vmm"] as const).map((victim): Case => ({
      operation: "start",
      victim,
      step: "vmm.booting",
      workspace: "w",
      before: () => halted("w"),
      args: () => ["start", "w"],
      usable: () => startable("w")
    })),
    ...(["cli", "runtime", "vmm"] as const).map((victim): Case => ({
      operation: "exec",
      victim,
      step: "exec.connected",
      workspace: "w",
      before: () => running("w"),
      args: () => ["exec", "w", "--", "echo", "hi"],
      usable: () => startable("w")
    })),
    ...(["cli", "runtime", "vmm"] as const).map((victim): Case => ({
      operation: "halt",
      victim,
      step: "halt.stopping",
      workspace: "w",
      before: () => running("w"),
      args: () => ["halt", "w"],
      usable: () => startable("w")
    })),
    ...(["cli", "runtime", "vmm"] as const).map((victim): Case => ({
      operation: "cp in",
      victim,
      step: "cp.reached",
      workspace: "w",
      before: () => running("w"),
      args: () => ["cp", hostFile(), "w:/root/payload.txt"],
      usable: async () => {
        await startable("w")
        await ok(["cp", hostFile(), "w:/root/payload.txt"])
      }
    })),
    ...(["cli", "runtime", "vmm"] as const).map((victim): Case => ({
      operation: "cp out",
      victim,
      step: "cp.reached",
      workspace: "w",
      before: () => running("w"),
      args: () => ["cp", "w:/etc/hostname", NodePath.join(scratch, `out-${victim}`)],
      usable: async () => {
        await startable("w")
        await copiedBack("w")
      }
    })),
    ...(["cli", "runtime"] as const).map((victim): Case => ({
      operation: "delete",
      victim,
      step: "delete.files-removed",
      workspace: "w",
      before: () => running("w"),
      args: () => ["delete", "--force", "w"],
      usable: async () => {
        await ok(["delete", "--force", "w"])
        await ok(["create", "--image", image, "w"])
      }
    })),
    ...(["cli"] as const).map((victim): Case => ({
      operation: "create",
      victim,
      step: "create.recorded",
      workspace: "c",
      before: async () => {},
      args: () => ["create", "--image", image, "c"],
      usable: async () => {
        await ok(["delete", "--force", "c"])
        await ok(["create", "--image", image, "c"])
        await ok(["delete", "c"])
      }
    })),
    ...(["cli", "runtime", "vmm"] as const).map((victim): Case => ({
      operation: "run",
      victim,
      step: "vmm.booting",
      workspace: `r-${victim}`,
      before: async () => {},
      // A boot: with a fault armed, a warm run's fallback to a boot would stop at the fault again.
      args: () => ["run", "--cold", "--name", `r-${victim}`, image, "--", "true"],
      usable: async () => {
        await ok(["delete", "--force", `r-${victim}`])
        await ok(["run", "--name", `r-${victim}`, image, "--", "true"])
      }
    })),
    ...(["runtime", "vmm"] as const).map((victim): Case => ({
      operation: "volume attach",
      victim,
      step: "vmm.booting",
      workspace: "v",
      before: async () => {
        if ((await ma(["volume", "inspect", "vol"])).code !== 0) {
          await ok(["volume", "create", "--size-mib", "16", "vol"])
        }
        if ((await ma(["inspect", "v"])).code !== 0) {
          await ok(["create", "--image", image, "-v", "vol:/data", "v"])
        }
        await halted("v")
      },
      args: () => ["start", "v"],
      usable: async () => {
        await startable("v")
        await ok(["kill", "v"])
      }
    })),
    ...(fabricProblem() === undefined ? ["cli", "runtime", "vmm"] as const : []).map((victim): Case => ({
      operation: "network join",
      victim,
      step: "vmm.booting",
      workspace: "n",
      before: async () => {
        if ((await ma(["network", "inspect", "lab"])).code !== 0) {
          await ok(["network", "create", "lab", "--subnet", "10.93.0.0/24"])
        }
        if ((await ma(["inspect", "n"])).code !== 0) {
          await ok(["create", "--network", "lab", "--image", image, "n"])
        }
        await halted("n")
      },
      args: () => ["start", "n"],
      usable: async () => {
        await startable("n")
        await ok(["kill", "n"])
      }
    }))
  ]

  for (const c of cases) {
    it(`${c.operation} × kill -9 ${c.victim} at ${c.step}`, async () => {
      await c.before()
      await crashAt(c.args(), c.step, c.victim, c.workspace)
      await verdict(c.operation, c.victim, c.usable)
    })
  }
})

/**
 * A registry on 127.0.0.1 serving one image from an OCI layout, whose largest blob (the layer) is cut
 * half way on every request: the connection dropped, or left open and silent.
 */
const flakyRegistry = async (layout: string, mode: "drop" | "stall" | "none") => {
  const blob = (digest: string) => NodePath.join(layout, "blobs", "sha256", digest.replace(/^sha256:/, ""))
  const index = JSON.parse(NodeFs.readFileSync(NodePath.join(layout, "index.json"), "utf8")) as {
    manifests: Array<{ digest: string; mediaType: string }>
  }
  const top = index.manifests[0]!
  const sizes = NodeFs.readdirSync(NodePath.join(layout, "blobs", "sha256")).map((hex) => ({
    hex,
    size: NodeFs.statSync(blob(hex)).size
  }))
  const layer = sizes.reduce((a, b) => (b.size > a.size ? b : a)).hex
  let cut = 0
  const sockets = new Set<NodeNet.Socket>()
  const server = NodeHttp.createServer((request, response) => {
    const url = request.url ?? ""
    const send = (path: string, type: string, digest: string) => {
      const body = NodeFs.readFileSync(path)
      response.writeHead(200, {
        "content-type": type,
        "content-length": body.length,
        "docker-content-digest": digest
      })
      response.end(request.method === "HEAD" ? undefined : body)
    }
    if (url === "/v2/") return response.writeHead(200, { "content-type": "application/json" }).end("{}")
    const manifest = /^\/v2\/flaky\/manifests\/(.+)$/.exec(url)
    if (manifest !== null) {
      const digest = manifest[1] === "latest" ? top.digest : manifest[1]!
      const mediaType =
        (JSON.parse(NodeFs.readFileSync(blob(digest), "utf8")) as { mediaType?: string }).mediaType
      return send(blob(digest), mediaType ?? top.mediaType, digest)
    }
    const blobMatch = /^\/v2\/flaky\/blobs\/(sha256:[a-f0-9]{64})$/.exec(url)
    if (blobMatch === null) return response.writeHead(404).end()
    const digest = blobMatch[1]!
    if (mode === "none" || digest !== `sha256:${layer}`) {
      return send(blob(digest), "application/octet-stream", digest)
    }
    cut++
    const body = NodeFs.readFileSync(blob(digest))
    response.writeHead(200, { "content-type": "application/octet-stream", "content-length": body.length })
    response.write(body.subarray(0, Math.floor(body.length / 2)))
    if (mode === "drop") setTimeout(() => request.socket.destroy(), 20)
  })
  server.on("connection", (socket) => {
    sockets.add(socket)
    socket.on("close", () => sockets.delete(socket))
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as NodeNet.AddressInfo).port
  return {
    ref: `127.0.0.1:${port}/flaky:latest`,
    cuts: () => cut,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resolve())
      })
  }
}

/**
 * `promise`, or after `ms` a failure naming `what` with `detail()`, the runtime's log and the
 * project's processes: a phase of a case that hangs says where, whatever the case's own timeout.
 */
const within = async <A>(
  what: string,
  ms: number,
  promise: Promise<A>,
  detail?: () => string
): Promise<A> => {
  let bound: NodeJS.Timeout | undefined
  const late = new Promise<never>((_, reject) => {
    bound = setTimeout(() => {
      const log = NodePath.join(stateDir, "run", "runtime.log")
      const tail = NodeFs.existsSync(log)
        ? NodeFs.readFileSync(log, "utf8").split("\n").slice(-40).join("\n")
        : ""
      const processes = NodeChild.spawnSync("pgrep", ["-fa", stateDir], { encoding: "utf8" }).stdout
      reject(
        new Error(
          `${what}: not done in ${ms / 1000} s${detail === undefined ? "" : `; ${detail()}`}; runtime ${
            runtimePid() ?? "none"
          }; processes:\n${processes}\nruntime log:\n${tail}`
        )
      )
    }, ms)
  })
  return Promise.race([promise, late]).finally(() => clearTimeout(bound))
}

const lastError = (result: CliResult) =>
  JSON.parse(result.stderr.trim().split("\n").at(-1) ?? "{}") as {
    error: { kind: string; message: string; retryable: boolean; retry_after_ms?: number }
  }

/** A tmpfs of `sizeMiB` mounted on a fresh directory (needs root), unmounted by `unmount`. */
const smallDisk = (sizeMiB: number) => {
  const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-crash-full-"))
  const mounted = NodeChild.spawnSync("mount", [
    "-t",
    "tmpfs",
    "-o",
    `size=${sizeMiB}m,mode=0700`,
    "tmpfs",
    dir
  ], {
    encoding: "utf8"
  })
  assert.strictEqual(mounted.status, 0, `mounting a tmpfs needs root (util-linux mount): ${mounted.stderr}`)
  const filler = NodePath.join(dir, "filler")
  return {
    dir,
    /** Fills the file system until only `leaveKiB` are free. */
    fill: (leaveKiB: number) => {
      NodeFs.rmSync(filler, { force: true })
      const free = NodeFs.statfsSync(dir).bavail * NodeFs.statfsSync(dir).bsize
      const size = Math.max(0, free - leaveKiB * 1024)
      const made = NodeChild.spawnSync("fallocate", ["-l", String(size), filler], { encoding: "utf8" })
      assert.strictEqual(made.status, 0, `fallocate (util-linux): ${made.stderr}`)
    },
    free: () => NodeFs.rmSync(filler, { force: true }),
    unmount: () => {
      NodeChild.spawnSync("umount", ["-l", dir])
      NodeFs.rmSync(dir, { recursive: true, force: true })
    }
  }
}

describe("faults", () => {
  it(
    "the runtime killed with 10 execs in flight: each caller gets a transient error or a result, the VM lives on",
    async () => {
      const step: Step = "exec.connected"
      // Every phase has its own bound, so that a slow or stuck one fails the case naming itself, with
      // what the runtime and the host show, before the case's own timeout.
      await freshRuntime()
      await within("w running", 150_000, running("w"))
      await freshRuntime()
      const [vmm] = qemuProcessesMentioning(`${stateDir}/run/w/`)
      const execs = Array.from({ length: 10 }, (_, i) => armed(["exec", "w", "--", "echo", `n${i}`], step))
      // A caller that lost its runtime before it was served may start another one, which carries the
      // armed step in its environment and pauses there again: once the runtime is killed, the step stays
      // disarmed until the case ends, the final exec included.
      let disarm: NodeJS.Timeout | undefined
      try {
        await within(
          "10 execs in flight",
          // Ten CLI processes starting at once on a busy 2-core host take a while.
          150_000,
          waitFor("10 execs in flight", () =>
            NodeFs.existsSync(marker(step))
            && NodeFs.readFileSync(marker(step), "utf8").trim().split("\n").length >= 10, 160_000),
          () =>
            `marker ${NodeFs.existsSync(marker(step)) ? NodeFs.readFileSync(marker(step), "utf8") : "absent"}`
        )
        const runtime = runtimePid()
        assert.isDefined(runtime)
        process.kill(runtime!, "SIGKILL")
        disarm = setInterval(() => NodeFs.rmSync(marker(step), { force: true }), 20)
        const results = await within(
          "every caller to answer after the runtime was killed",
          90_000,
          Promise.all(execs.map((e) => e.done)),
          () =>
            JSON.stringify(
              execs.map((e, i) => ({ i, pid: e.pid, alive: alive(e.pid), ...e.output() }))
                .filter((e) => e.alive)
            )
        )
        for (const [i, result] of results.entries()) {
          if (result.code === 0) assert.strictEqual(json(result).result.stdout, `n${i}\n`)
          else {
            assert.strictEqual(result.code, 75, result.stderr)
            assert.strictEqual(lastError(result).error.kind, "transient")
          }
        }
        assert.isTrue(alive(vmm!), "the VM outlives the runtime")
        // A runtime started by a caller still has the step armed: replace it, so the next command runs
        // unpaused.
        await freshRuntime()
        const again = await within(
          "an exec on a new runtime",
          90_000,
          ok(["exec", "w", "--", "echo", "again"])
        )
        assert.strictEqual(json(again).result.stdout, "again\n")
      } finally {
        clearInterval(disarm)
        for (const e of execs) if (alive(e.pid)) process.kill(e.pid, "SIGKILL")
      }
    },
    600_000
  )

  it("a one-shot run whose runtime is killed mid-command: gc (or the next runtime) deletes it, VM and all", async () => {
    await freshRuntime()
    const name = "r-abandoned"
    const run = ma(["run", "--name", name, defaultImage, "--", "sleep", "600"])
    // Running, with its command under way in the guest.
    const deadline = Date.now() + 240_000
    while (Date.now() < deadline) {
      const inspected = await ma(["inspect", name])
      if (inspected.code === 0 && json(inspected).workspace.state === "running") break
      await sleep(250)
    }
    await sleep(1000)
    const [vmm] = qemuProcessesMentioning(`${stateDir}/run/${name}/`)
    assert.isDefined(vmm, "the run's VM runs")
    process.kill(runtimePid()!, "SIGKILL")
    const lost = await run
    assert.strictEqual(lost.code, 75, lost.stderr)
    // Nothing else will ever delete it: gc does (and so does the next runtime, which gc starts).
    const report = json(await ok(["gc"]))
    // gc's own delete, or the one of the runtime that gc started, which may come first.
    assert.deepStrictEqual(report.abandoned.map((a: { workspace: string }) => a.workspace), [name])
    assert.include(["deleted", "gone already"], report.abandoned[0].action)
    await waitFor("the abandoned run's VM to end", () => !alive(vmm!), 30_000)
    assert.isFalse(NodeFs.existsSync(NodePath.join(stateDir, "workspaces", name)))
    const names = json(await ok(["list"])).workspaces.map((w: { name: string }) => w.name)
    assert.notInclude(names, name)
    assert.include(names, "w", "a workspace that is not a one-shot run is left alone")
  })

  it("a full disk: resource_exhausted naming what filled up, nothing half-written, and the next command works", async () => {
    const disk = smallDisk(96)
    const layout = NodePath.join(scratch, "full-layout")
    writeOciLayout(layout, [{
      layers: busyboxLayers(),
      architecture: process.arch === "arm64" ? "arm64" : "amd64",
      config: busyboxConfig
    }])
    const registry = await flakyRegistry(layout, "none")
    const local = (args: ReadonlyArray<string>) => cliAsync(args, { stateDir: disk.dir, env: env() })
    const exhausted = (result: CliResult, what: string) => {
      assert.strictEqual(result.code, 1, `${what}: ${result.stderr}`)
      const { error } = lastError(result)
      assert.strictEqual(error.kind, "resource_exhausted", `${what}: ${error.message}`)
      assert.include(error.message, "is full", what)
      assert.include(error.message, disk.dir, what)
    }
    try {
      assert.strictEqual((await local(["image", "ls"])).code, 0)
      // Pull: the blobs do not fit.
      disk.fill(256)
      exhausted(await local(["image", "pull", registry.ref]), "pull")
      assert.deepStrictEqual(JSON.parse((await local(["image", "ls"])).stdout).images, [])
      const partials = NodeFs.readdirSync(NodePath.join(disk.dir, "images"), { recursive: true }).map(String)
        .filter((f) => f.includes("partial"))
      assert.deepStrictEqual(partials, [], "no partial blob left")
      disk.free()
      assert.strictEqual((await local(["image", "pull", registry.ref])).code, 0, "pull once space is freed")

      // Volume create: mke2fs cannot write the file system's metadata.
      disk.fill(64)
      exhausted(await local(["volume", "create", "--size-mib", "64", "v"]), "volume create")
      assert.deepStrictEqual(JSON.parse((await local(["volume", "ls"])).stdout).volumes, [])
      assert.deepStrictEqual(NodeFs.readdirSync(NodePath.join(disk.dir, "volumes")), [], "no staging left")
      disk.free()
      assert.strictEqual((await local(["volume", "create", "--size-mib", "64", "v"])).code, 0)

      // Rootfs build: the layers are in the store, but a baseline built another way (devices refused)
      // does not fit; then the copy of the image's disk for a new workspace does not fit either.
      const listing = (dir: string) => NodeFs.readdirSync(NodePath.join(disk.dir, dir)).sort()
      const baselines = listing(NodePath.join("images", "rootfs"))
      const nothingHalfWritten = async (what: string) => {
        assert.deepStrictEqual(JSON.parse((await local(["ls"])).stdout).workspaces, [], `${what}: no record`)
        assert.deepStrictEqual(
          listing(NodePath.join("images", "rootfs")),
          baselines,
          `${what}: no partial baseline`
        )
        assert.deepStrictEqual(listing("tmp"), [], `${what}: no build directory left`)
        assert.deepStrictEqual(listing("workspaces"), [], `${what}: no workspace directory left`)
      }
      disk.fill(1024)
      const build = await local(["create", "--refuse-devices", "--image", registry.ref, "b"])
      exhausted(build, "rootfs build")
      assert.include(lastError(build).error.message, "building a root filesystem image")
      await nothingHalfWritten("rootfs build")
      disk.fill(128)
      const copy = await local(["create", "--image", registry.ref, "c"])
      exhausted(copy, "workspace disk")
      assert.include(lastError(copy).error.message, `the file system holding ${disk.dir}/workspaces is full`)
      await nothingHalfWritten("workspace disk")
      disk.free()
      const built = await local(["create", "--refuse-devices", "--image", registry.ref, "b"])
      assert.strictEqual(built.code, 0, built.stderr)
      assert.strictEqual((await local(["delete", "b"])).code, 0)

      // cp into a stopped workspace's disk: the sparse disk cannot grow.
      assert.strictEqual((await local(["create", "--image", registry.ref, "f"])).code, 0)
      const big = NodePath.join(scratch, "big.bin")
      NodeFs.writeFileSync(big, NodeCrypto.randomBytes(4 * 1024 * 1024))
      disk.fill(512)
      exhausted(await local(["cp", big, "f:/root/big.bin"]), "cp in")
      disk.free()
      const copied = await local(["cp", big, "f:/root/big.bin"])
      assert.strictEqual(copied.code, 0, copied.stderr)
    } finally {
      await registry.close()
      stopRuntime(disk.dir)
      disk.unmount()
    }
  })

  it("a registry that drops or stalls mid-blob: bounded retries, then transient with retry_after_ms", async () => {
    // A layer of its own (random), so no blob of it is in the store already.
    const layout = NodePath.join(scratch, "flaky-layout")
    writeOciLayout(layout, [{
      layers: [[{ path: "junk", content: NodeCrypto.randomBytes(1024 * 1024) }]],
      architecture: process.arch === "arm64" ? "arm64" : "amd64",
      config: busyboxConfig
    }])
    for (const mode of ["drop", "stall"] as const) {
      const registry = await flakyRegistry(layout, mode)
      try {
        const pulled = await cliAsync(["image", "pull", registry.ref], {
          stateDir,
          env: { ...env(), MICROAGENT_REGISTRY_STALL_SECONDS: "1" }
        })
        assert.strictEqual(pulled.code, 75, `${mode}: ${pulled.stderr}`)
        const { error } = lastError(pulled)
        assert.strictEqual(error.kind, "transient", mode)
        assert.isTrue(error.retryable)
        assert.isAbove(error.retry_after_ms ?? 0, 0, `${mode}: retry_after_ms`)
        assert.isAtLeast(registry.cuts(), 2, `${mode}: retried`)
        assert.isAtMost(registry.cuts(), 6, `${mode}: bounded`)
        const images = json(await ok(["image", "ls"])).images as Array<{ ref: string }>
        assert.isFalse(images.some((i) => i.ref.includes("flaky")), "nothing recorded")
        const partials = NodeFs.readdirSync(NodePath.join(stateDir, "images", "blobs"), { recursive: true })
          .map(String).filter((f) => f.includes("partial"))
        assert.deepStrictEqual(partials, [], "no partial blob left")
      } finally {
        await registry.close()
      }
    }
  })
})

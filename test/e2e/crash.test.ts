/**
 * Crash consistency on real QEMU microVMs: kill -9 of the CLI, the runtime or the VMM at named steps
 * of each lifecycle operation, then the recovery rules of docs/architecture.md ("Crash recovery")
 * are checked: within 10 s and at most one `gc`, no VMM without a live record, no live record without
 * a VMM, nothing left on the host (staging, temp files, loop devices, mounts, namespaces, taps),
 * volume claims released, and the workspace usable again.
 *
 * Kill points are deterministic: the test arms a step with MICROAGENT_FAULT_PAUSE (see
 * src/layers/process/FaultPoint.ts); the process that reaches it writes its pid and waits, the test
 * kills what the case names, then lets the survivors carry on.
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { defaultImage } from "../../src/layers/image/BuiltinImages.ts"
import { namespacePrefix, stateTag } from "../../src/layers/network/Addressing.ts"
import { fabricProblem } from "../../src/layers/network/Fabric.ts"
import { binPath, cliAsync, type CliResult, stopRuntime } from "../support/cli.ts"
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
  ...(step === undefined ? {} : { MICROAGENT_FAULT_PAUSE: step, MICROAGENT_FAULT_DIR: faultDir })
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
  if (pid === undefined) return
  stopRuntime(stateDir)
  await waitFor("the runtime to exit", () => !alive(pid), 30_000)
}

const qemuProcesses = () => qemuProcessesMentioning(`${stateDir}/`)

/** A CLI command started with a step armed; its pid is at hand to kill it. */
const armed = (args: ReadonlyArray<string>, step: Step) => {
  const child = NodeChild.spawn(process.execPath, [binPath, ...args], {
    env: {
      ...process.env,
      MICROAGENT_HOME: stateDir,
      MICROAGENT_OUTPUT: "",
      NO_COLOR: "1",
      MICROAGENT_RUNTIME_IDLE_SECONDS: "2",
      ...env(step)
    },
    stdio: ["ignore", "pipe", "pipe"]
  })
  let stdout = ""
  let stderr = ""
  child.stdout.on("data", (d) => (stdout += d))
  child.stderr.on("data", (d) => (stderr += d))
  const done = new Promise<CliResult>((resolve) =>
    child.on("close", (code) => resolve({ code: code ?? -1, stdout, stderr }))
  )
  return { pid: child.pid!, done }
}

const marker = (step: Step) => NodePath.join(faultDir, step)

/**
 * Runs `args` with `step` armed, kills `victim` once a process paused there, lets the others go on,
 * and returns what the command said.
 */
const crashAt = async (args: ReadonlyArray<string>, step: Step, victim: Victim, workspace: string) => {
  await freshRuntime()
  const command = armed(args, step)
  await waitFor(`${args.join(" ")} to reach ${step}`, () => NodeFs.existsSync(marker(step)))
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

const records = async (): Promise<ReadonlyArray<Recorded>> => {
  const names = (json(await ok(["list"])).workspaces as Array<{ name: string }>).map((w) => w.name)
  const out: Array<Recorded> = []
  for (const name of names) {
    const inspected = await ma(["inspect", name])
    if (inspected.code !== 0) continue
    const ws = json(inspected).workspace
    out.push({ name, state: ws.state, vmPid: ws.vm?.pid })
  }
  return out
}

const live = ["starting", "running", "paused", "stopping"]

const lines = (command: string, args: ReadonlyArray<string>) => {
  const result = NodeChild.spawnSync(command, [...args], { encoding: "utf8" })
  return (result.stdout ?? "").split("\n").filter((l) => l.length > 0)
}

/** Everything the recovery rules forbid, as readable problems; empty when all is well. */
const problems = async (): Promise<Array<string>> => {
  const found: Array<string> = []
  const recorded = await records()
  const vmms = qemuProcesses()
  for (const pid of vmms) {
    if (!recorded.some((r) => live.includes(r.state) && r.vmPid === pid)) {
      found.push(`VMM ${pid} without a live record`)
    }
  }
  for (const r of recorded) {
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
    const needed = new Set(
      (json(await ok(["network", "ls"])).networks as Array<
        { name: string; members: Array<{ workspace: string }> }
      >)
        .filter((n) =>
          n.members.some((m) => live.includes(recorded.find((r) => r.name === m.workspace)?.state ?? ""))
        )
        .map((n) => n.name)
    )
    const namespaces = lines("ip", ["netns", "list"]).map((l) => l.split(" ")[0]!).filter((ns) =>
      ns.startsWith(namespacePrefix(root)) && !needed.has(ns.slice(namespacePrefix(root).length))
    )
    if (namespaces.length > 0) found.push(`namespaces: ${namespaces.join(", ")}`)
    const liveTaps = recorded.filter((r) => live.includes(r.state)).length
    const taps = lines("ip", ["-o", "link"]).filter((l) => l.includes(stateTag(root)))
    if (liveTaps === 0 && taps.length > 0) found.push(`links: ${taps.join("; ")}`)
  }
  for (
    const volume of json(await ok(["volume", "ls"])).volumes as Array<{ name: string; attachedTo?: string }>
  ) {
    const holder = volume.attachedTo
    if (holder !== undefined && !recorded.some((r) => r.name === holder && live.includes(r.state))) {
      found.push(`volume ${volume.name} still claimed by ${holder}`)
    }
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
  // Let the next runtime's reconcile (or the surviving process) finish on its own first.
  while (left.length > 0 && Date.now() < deadline - 4000) {
    await sleep(500)
    left = await problems()
  }
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
  await freshRuntime()
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
  /** `start w` killed with its runtime while QEMU boots: the record reads failed, QEMU still runs. */
  const orphaned = async () => {
    const { result } = await crashAt(["start", "w"], "vmm.booting", "runtime", "w")
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

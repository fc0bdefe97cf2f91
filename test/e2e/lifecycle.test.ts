/**
 * The workspace lifecycle on real QEMU microVMs, driven through the CLI as users drive it: images
 * built from Debian's busybox-static and served by a loopback registry, the Debian cloud kernel, the
 * guest agent in the initramfs.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { cli, cliAsync, type CliResult, errorOf, stopRuntime } from "../support/cli.ts"
import { busyboxLayers, hostArchitecture, pushBusyboxImage, pushSpec } from "../support/images.ts"
import { qemuProcessesMentioning } from "../support/kernel.ts"
import { requireTool, startRegistry, type TestRegistry } from "../support/registry.ts"

let registry: TestRegistry
let stateDir: string
let scratch: string
let busybox: string
let configured: string

const ma = (args: ReadonlyArray<string>, input?: string): Promise<CliResult> =>
  cliAsync(args, { stateDir, env: { MICROAGENT_BACKEND: "qemu" }, ...(input === undefined ? {} : { input }) })

const json = (result: CliResult) => {
  assert.strictEqual(result.stderr.includes("internal error"), false, result.stderr)
  assert.isAbove(result.stdout.length, 0, `no output; exit ${result.code}; stderr: ${result.stderr}`)
  return JSON.parse(result.stdout)
}

const cliSync = (args: ReadonlyArray<string>) => cli(args, { stateDir })

/** QEMU processes whose command line mentions this test's state directory. */
const qemuProcesses = (): Array<number> => qemuProcessesMentioning(stateDir)

const waitFor = async (what: string, condition: () => boolean, timeoutMs = 60_000) => {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

beforeAll(async () => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("mke2fs", "e2fsprogs")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-e2e-"))
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-e2e-scratch-"))
  registry = await startRegistry()
  busybox = pushBusyboxImage(registry, scratch).ref
  const [base, etc] = busyboxLayers()
  configured = pushSpec(registry, scratch, "configured:latest", [{
    layers: [base!, etc!, [{ path: "srv/", type: "dir", mode: 0o777 }, {
      path: "srv/marker",
      content: "from the image\n"
    }]],
    architecture: hostArchitecture,
    config: {
      Entrypoint: ["/bin/sh", "-c"],
      Cmd: ['echo "$GREETING from $(pwd) as $(id -u):$(id -g)"; cat marker'],
      Env: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello"],
      User: "65534:65534",
      WorkingDir: "/srv"
    }
  }]).ref
  // Pull once up front so each test's time is the VM's.
  for (const ref of [busybox, configured]) assert.strictEqual((await ma(["image", "pull", ref])).code, 0)
}, 600_000)

afterAll(async () => {
  stopRuntime(stateDir)
  for (const pid of qemuProcesses()) process.kill(pid, "SIGKILL")
  await registry?.stop()
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
  NodeFs.rmSync(scratch, { recursive: true, force: true })
})

describe("real microVMs through the CLI", () => {
  it("runs uname in a microVM with its own kernel and leaves nothing behind", async () => {
    const out = await ma(["run", busybox, "--", "uname", "-a"])
    const result = json(out)
    assert.strictEqual(out.code, 0)
    assert.match(result.result.stdout, /^Linux run-\S+ \S+-cloud-amd64 .* x86_64/)
    assert.notStrictEqual(
      result.result.stdout.split(" ")[2],
      NodeOs.release(),
      "the guest runs its own kernel"
    )
    assert.deepStrictEqual(json(await ma(["list"])).workspaces, [])
    assert.deepStrictEqual(qemuProcesses(), [])
    assert.deepStrictEqual(
      NodeFs.readdirSync(NodePath.join(stateDir, "run")).filter((f) => !f.startsWith("runtime")),
      []
    )
  })

  it("passes exit codes 0, 1 and 7 through, and reports death by signal", async () => {
    const code = async (script: string) => (await ma(["run", busybox, "--", "sh", "-c", script])).code
    assert.strictEqual(await code("exit 0"), 0)
    assert.strictEqual(await code("exit 1"), 1)
    assert.strictEqual(await code("exit 7"), 7)
    const killed = json(await ma(["run", busybox, "--", "sh", "-c", "kill -9 $$"]))
    assert.strictEqual(killed.result.status, "signaled")
    assert.strictEqual(killed.result.signal, 9)
    assert.strictEqual(killed.result.exitCode, 137)
  })

  it("returns 10 MiB of output intact and feeds stdin", async () => {
    const big = json(await ma(["run", busybox, "--", "sh", "-c", "head -c 10485760 /dev/zero | tr '\\0' x"]))
    assert.strictEqual(big.result.stdout.length, 10 * 1024 * 1024)
    assert.isTrue(/^x+$/.test(big.result.stdout))
    assert.isFalse(big.result.stdoutTruncated)
    const input = NodePath.join(scratch, "input.txt")
    NodeFs.writeFileSync(input, "one\ntwo\nthree\n")
    const counted = json(await ma(["run", "--stdin", input, busybox, "--", "wc", "-l"]))
    assert.strictEqual(counted.result.stdout.trim(), "3")
  })

  it("honours the image's Entrypoint, Cmd, Env, User and WorkingDir", async () => {
    const out = json(await ma(["run", configured]))
    assert.strictEqual(out.result.stdout, "hello from /srv as 65534:65534\nfrom the image\n")
    const overridden = json(
      await ma(["run", "-e", "GREETING=hi", configured, "--", "sh", "-c", "echo $GREETING $(id -u) $(pwd)"])
    )
    assert.strictEqual(overridden.result.stdout, "hi 65534 /srv\n")
  })

  it("pauses and resumes, and keeps the disk across halt and start", async () => {
    assert.strictEqual((await ma(["create", "--image", busybox, "keeper"])).code, 0)
    assert.strictEqual((await ma(["start", "keeper"])).code, 0)
    const wrote = await ma(["exec", "keeper", "--", "sh", "-c", "echo persisted > /root/note && sync"])
    assert.strictEqual(wrote.code, 0, wrote.stderr)
    // Paused, the guest's clocks stand still: its uptime moves by much less than the host's time.
    const uptime = async () =>
      Number(json(await ma(["exec", "keeper", "--", "cut", "-d", " ", "-f1", "/proc/uptime"])).result.stdout)
    const guestBefore = await uptime()
    const hostBefore = Date.now()
    assert.strictEqual(json(await ma(["pause", "keeper"])).state, "paused")
    const refused = await ma(["exec", "keeper", "--", "true"])
    assert.strictEqual(refused.code, 1, refused.stderr)
    assert.strictEqual(errorOf(refused).error.kind, "conflict")
    assert.include(errorOf(refused).error.remediation, "microagent resume keeper")
    assert.strictEqual(json(await ma(["pause", "keeper"])).state, "paused", "pausing twice changes nothing")
    await new Promise((resolve) => setTimeout(resolve, 4000))
    const pausedMs = Date.now() - hostBefore
    assert.strictEqual(json(await ma(["resume", "keeper"])).state, "running")
    const guestDelta = (await uptime()) - guestBefore
    const hostDelta = (Date.now() - hostBefore) / 1000
    assert.isBelow(
      guestDelta,
      hostDelta - 3,
      `guest ${guestDelta} s, host ${hostDelta} s, paused ${pausedMs} ms`
    )
    // Halting a paused workspace lets it run first, so the guest shuts down cleanly.
    assert.strictEqual(json(await ma(["pause", "keeper"])).state, "paused")
    const halted = json(await ma(["halt", "keeper"]))
    assert.strictEqual(halted.state, "halted")
    assert.isTrue(
      json(await ma(["events", "keeper"])).events.some((e: { detail: string }) =>
        e.detail === "guest powered off"
      ),
      "the guest powered off by itself"
    )
    const notPaused = await ma(["resume", "keeper"])
    assert.strictEqual(errorOf(notPaused).error.kind, "conflict")
    assert.deepStrictEqual(qemuProcesses(), [])
    assert.strictEqual((await ma(["start", "keeper"])).code, 0)
    const read = json(await ma(["exec", "keeper", "--", "cat", "/root/note"]))
    assert.strictEqual(read.result.stdout, "persisted\n")
    const logs = json(await ma(["logs", "keeper"]))
    assert.isAbove(logs.logs.length, 0)
    assert.strictEqual((await ma(["delete", "--force", "keeper"])).code, 0)
    assert.deepStrictEqual(qemuProcesses(), [])
  })

  it("runs 4 workspaces at once", async () => {
    const names = ["para-1", "para-2", "para-3", "para-4"]
    for (const name of names) {
      assert.strictEqual((await ma(["create", "--image", busybox, "--memory", "256", name])).code, 0)
    }
    const started = await Promise.all(names.map((name) => cliAsync(["start", name], { stateDir })))
    for (const s of started) assert.strictEqual(s.code, 0, s.stderr)
    assert.strictEqual(qemuProcesses().length, 4)
    for (const name of names) {
      const out = json(await ma(["exec", name, "--", "hostname"]))
      assert.strictEqual(out.result.stdout, `${name}\n`)
    }
    assert.strictEqual((await ma(["delete", "--force", ...names])).code, 0)
    assert.deepStrictEqual(qemuProcesses(), [])
  })

  it("runs 8 concurrent execs on one workspace from separate processes", async () => {
    assert.strictEqual((await ma(["create", "--image", busybox, "busy8"])).code, 0)
    assert.strictEqual((await ma(["start", "busy8"])).code, 0)
    const results = await Promise.all(
      [1, 2, 3, 4, 5, 6, 7, 8].map((n) =>
        ma(["exec", "busy8", "--", "sh", "-c", `sleep 1; echo ${n}; exit ${n}`])
      )
    )
    results.forEach((result, i) => {
      assert.strictEqual(result.code, i + 1, result.stderr)
      assert.strictEqual(json(result).result.stdout, `${i + 1}\n`)
    })
    assert.strictEqual((await ma(["delete", "--force", "busy8"])).code, 0)
  })

  it("survives kill -9 of the runtime in the middle of an exec: the VM lives on, the next exec works", async () => {
    assert.strictEqual((await ma(["create", "--image", busybox, "survivor"])).code, 0)
    assert.strictEqual((await ma(["start", "survivor"])).code, 0)
    const [vmm] = qemuProcesses()
    const pending = ma(["exec", "survivor", "--", "sleep", "30"])
    await new Promise((resolve) => setTimeout(resolve, 1500))
    const runtimePid = Number(
      NodeFs.readFileSync(NodePath.join(stateDir, "run", "runtime.pid"), "utf8").split(" ")[0]
    )
    process.kill(runtimePid, "SIGKILL")
    const interrupted = await pending
    assert.strictEqual(interrupted.code, 75, interrupted.stderr)
    assert.strictEqual(errorOf(interrupted).error.kind, "transient")
    assert.deepStrictEqual(qemuProcesses(), [vmm], "the VM outlives the runtime")
    const next = await ma(["exec", "survivor", "--", "echo", "still here"])
    assert.strictEqual(next.code, 0, next.stderr)
    assert.strictEqual(json(next).result.stdout, "still here\n")
    const newRuntime = Number(
      NodeFs.readFileSync(NodePath.join(stateDir, "run", "runtime.pid"), "utf8").split(" ")[0]
    )
    assert.notStrictEqual(newRuntime, runtimePid)
    assert.strictEqual((await ma(["delete", "--force", "survivor"])).code, 0)
    assert.deepStrictEqual(qemuProcesses(), [])
  })

  it("notices a QEMU killed from outside, and delete cleans up", async () => {
    await ma(["create", "--image", busybox, "victim"])
    await ma(["start", "victim"])
    const [pid] = qemuProcesses()
    assert.isDefined(pid)
    process.kill(pid!, "SIGKILL")
    await new Promise((resolve) => setTimeout(resolve, 300))
    const inspected = json(await ma(["inspect", "victim"]))
    assert.strictEqual(inspected.workspace.state, "failed")
    const exec = await ma(["exec", "victim", "--", "true"])
    assert.strictEqual(errorOf(exec).error.kind, "conflict")
    assert.strictEqual((await ma(["delete", "victim"])).code, 0)
    assert.isFalse(NodeFs.existsSync(NodePath.join(stateDir, "workspaces", "victim")))
    assert.isFalse(NodeFs.existsSync(NodePath.join(stateDir, "run", "victim")))
  })

  it("Ctrl-C during run leaves no process, no file and no record", async () => {
    const child = cliAsync(["run", "--name", "interrupted", busybox, "--", "sleep", "600"], {
      stateDir,
      env: { MICROAGENT_BACKEND: "qemu" }
    })
    await waitFor("the VM to boot", () => qemuProcesses().length === 1)
    await waitFor("the command to start", () => {
      const events = cliSync(["events", "interrupted"])
      return events.code === 0 && events.stdout.includes('"booted"')
    })
    const [cliPid] = NodeFs.readdirSync("/proc").filter((e) => /^\d+$/.test(e)).filter((pid) => {
      try {
        // The CLI itself, not the egress mediator or QEMU, whose command lines name the workspace too.
        const argv = NodeFs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")
        return argv[1]?.endsWith("microagent.mjs") === true && argv[2] === "run"
          && argv.includes("interrupted")
      } catch {
        return false
      }
    })
    process.kill(Number(cliPid), "SIGINT")
    const result = await child
    assert.notStrictEqual(result.code, 0)
    await waitFor("QEMU to exit", () => qemuProcesses().length === 0, 20_000)
    assert.strictEqual((await ma(["inspect", "interrupted"])).code, 1)
    assert.isFalse(NodeFs.existsSync(NodePath.join(stateDir, "workspaces", "interrupted")))
    assert.isFalse(NodeFs.existsSync(NodePath.join(stateDir, "run", "interrupted")))
  })
})

/**
 * On real QEMU microVMs: `perf boot` times a real boot's edges and cleans up, `perf footprint` reads a
 * real VMM's memory and the disk's use, and the exec fast path answers exactly as the full CLI.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { cliAsync, type CliResult, stopRuntime } from "../support/cli.ts"
import { qemuProcessesMentioning, requireTool } from "../support/kernel.ts"

let stateDir: string
const workspace = "measured"

const ma = (args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  cliAsync(args, {
    stateDir,
    env: { MICROAGENT_BACKEND: "qemu", MICROAGENT_RUNTIME_IDLE_SECONDS: "30", ...env }
  })

/** QEMU processes whose command line mentions this test's state directory. */
const qemuProcesses = (): Array<number> => qemuProcessesMentioning(stateDir)

beforeAll(async () => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-perf-"))
}, 600_000)

afterAll(async () => {
  await ma(["delete", "--force", workspace])
  stopRuntime(stateDir)
  for (const pid of qemuProcesses()) process.kill(pid, "SIGKILL")
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("perf on QEMU", () => {
  it("perf boot times the phases of a real boot, in order, and leaves nothing behind", async () => {
    const out = await ma(["perf", "boot", "--json", "--runs", "2", "--network", "isolated"])
    assert.strictEqual(out.code, 0, out.stderr)
    const report = JSON.parse(out.stdout)
    assert.strictEqual(report.backend, "qemu")
    for (const run of report.runs) {
      assert.isTrue(run.ok, run.error)
      const edges = [
        run.createdMs,
        run.vmmStartedMs,
        run.kernelStartedMs,
        run.initStartedMs,
        run.agentReadyMs,
        run.firstExecMs
      ]
      for (const edge of edges) assert.isNumber(edge, JSON.stringify(run))
      assert.deepStrictEqual(
        edges,
        [...edges].sort((a, b) => a - b),
        `edges in order: ${JSON.stringify(run)}`
      )
      assert.isAbove(run.guestUptimeAtReadyMs, 0, "the guest's own uptime at agent-ready")
      assert.isAbove(run.guestUptimeAtInitMs, 0, "the guest's own uptime when /init started")
      assert.isAtMost(run.guestUptimeAtInitMs, run.guestUptimeAtReadyMs)
      // The phases split VMM start to first result, on the host's clock, without gaps.
      const { execMs, firmwareMs, initMs, kernelMs } = run.phases
      for (const phase of [firmwareMs, kernelMs, initMs, execMs]) {
        assert.isAtLeast(phase, 0, JSON.stringify(run))
      }
      assert.strictEqual(firmwareMs + kernelMs + initMs + execMs, run.firstExecMs - run.vmmStartedMs)
    }
    assert.strictEqual(report.summary.failures, 0)
    assert.hasAllKeys(report.summary.phases, ["firmwareMs", "kernelMs", "initMs", "execMs"])
    const text = await ma(["perf", "boot", "--network", "isolated"], { MICROAGENT_OUTPUT: "text" })
    assert.strictEqual(text.code, 0, text.stderr)
    assert.match(
      text.stdout,
      /phases \(median ms\): firmware\/loader \d+, kernel to \/init \d+, \/init to agent/
    )
    assert.deepStrictEqual(qemuProcesses(), [], "every measured VM is gone")
    assert.deepStrictEqual(JSON.parse((await ma(["list", "--json"])).stdout).workspaces, [])
  })

  it("perf footprint reads the VMM's RSS and PSS and the rootfs's allocated and apparent size", async () => {
    for (const args of [["create", workspace], ["start", workspace]]) {
      const result = await ma(args)
      assert.strictEqual(result.code, 0, result.stderr)
    }
    const out = await ma(["perf", "footprint", "--json", workspace])
    assert.strictEqual(out.code, 0, out.stderr)
    const report = JSON.parse(out.stdout)
    const [ws] = report.workspaces
    assert.deepStrictEqual(qemuProcesses(), [ws.vmm.pid], "the VMM measured is this workspace's QEMU")
    assert.isAbove(ws.vmm.rssKiB, 10 * 1024)
    assert.isAbove(ws.vmm.pssKiB, 0)
    assert.isAtMost(ws.vmm.pssKiB, ws.vmm.rssKiB)
    const stat = NodeFs.statSync(ws.rootfs.path)
    assert.strictEqual(ws.rootfs.apparentBytes, stat.size)
    assert.strictEqual(ws.rootfs.allocatedBytes, stat.blocks * 512)
    assert.isAbove(ws.rootfs.allocatedBytes, 0)
    assert.isAbove(report.runtime.rssKiB, 10 * 1024)
    const text = await ma(["perf", "footprint", workspace], { MICROAGENT_OUTPUT: "text" })
    assert.include(text.stdout, "ROOTFS ALLOCATED")
  })

  it("the exec fast path answers as the full CLI on a real guest", async () => {
    const normal = (r: CliResult) => ({ ...r, stdout: r.stdout.replace(/"durationMs":[0-9.]+/g, "") })
    for (const output of ["text", "json"]) {
      for (
        const args of [
          ["exec", workspace, "--", "sh", "-c", "echo out; echo err >&2; exit 9"],
          [
            "exec",
            "-e",
            "X=1",
            "--cwd",
            "/tmp",
            "--user",
            "65534",
            workspace,
            "--",
            "sh",
            "-c",
            "echo $X; pwd; id -u"
          ],
          ["exec", "--timeout", "1", workspace, "--", "sleep", "10"],
          ["exec", workspace, "--", "/no/such/binary"],
          ["exec", "nope", "--", "true"]
        ]
      ) {
        const fast = await ma(args, { MICROAGENT_OUTPUT: output })
        const full = await ma(args, { MICROAGENT_OUTPUT: output, MICROAGENT_NO_FAST_PATH: "1" })
        assert.deepStrictEqual(normal(fast), normal(full), `${output}: ${args.join(" ")}`)
      }
    }
    const text = await ma(["exec", workspace, "--", "sh", "-c", "echo out; exit 9"], {
      MICROAGENT_OUTPUT: "text"
    })
    assert.deepStrictEqual([text.code, text.stdout], [9, "out\n"])
  })

  it("the run fast path answers as the full CLI on a real VM", async () => {
    const args = [
      "run",
      "--network",
      "isolated",
      "microagent.local/busybox:latest",
      "--",
      "sh",
      "-c",
      "uname -s; exit 3"
    ]
    const fast = await ma(args, { MICROAGENT_OUTPUT: "text" })
    const full = await ma(args, { MICROAGENT_OUTPUT: "text", MICROAGENT_NO_FAST_PATH: "1" })
    assert.deepStrictEqual(fast, full)
    assert.deepStrictEqual([fast.code, fast.stdout], [3, "Linux\n"])
    assert.deepStrictEqual(qemuProcesses().length, 1, "only the measured workspace's VM remains")
  })
})

/**
 * `perf boot`, `perf footprint` and piped `connect` through the CLI on the fake backend: the report
 * shapes, failures reported (not hidden), and errors classified.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { cliAsync, stopRuntime } from "../support/cli.ts"

let stateDir: string
const ma = (args: ReadonlyArray<string>, input?: string) =>
  cliAsync(args, { stateDir, env: { MICROAGENT_BACKEND: "fake" }, ...(input === undefined ? {} : { input }) })

beforeAll(async () => {
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-perf-"))
  for (const args of [["create", "w1"], ["start", "w1"], ["create", "idle"]]) {
    const result = await ma(args)
    assert.strictEqual(result.code, 0, result.stderr)
  }
})

afterAll(async () => {
  await ma(["delete", "--force", "w1", "idle"])
  stopRuntime(stateDir)
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("perf on the fake backend", () => {
  it("perf boot times each run's edges in order and leaves nothing behind", async () => {
    const out = await ma(["perf", "boot", "--runs", "2", "--json"])
    assert.strictEqual(out.code, 0, out.stderr)
    const report = JSON.parse(out.stdout)
    assert.strictEqual(report.backend, "fake")
    assert.deepStrictEqual(report.command, ["true"])
    assert.strictEqual(report.runs.length, 2)
    for (const run of report.runs) {
      assert.isTrue(run.ok)
      assert.isAtMost(run.createdMs, run.agentReadyMs)
      assert.isAtMost(run.agentReadyMs, run.firstExecMs)
    }
    assert.deepStrictEqual([report.summary.count, report.summary.failures], [2, 0])
    assert.isAtMost(report.summary.firstExecMs.min, report.summary.firstExecMs.max)
    const list = JSON.parse((await ma(["list", "--json"])).stdout)
    assert.deepStrictEqual(list.workspaces.map((w: { name: string }) => w.name).sort(), ["idle", "w1"])
  })

  it("perf boot reports a failed boot and exits 1", async () => {
    const out = await ma(["perf", "boot", "--json", "not a reference!"])
    assert.strictEqual(out.code, 1, out.stderr)
    const report = JSON.parse(out.stdout)
    assert.strictEqual(report.summary.failures, 1)
    assert.isFalse(report.runs[0].ok)
    assert.isString(report.runs[0].error)
  })

  it("perf boot refuses a bad --runs", async () => {
    const out = await ma(["perf", "boot", "--json", "--runs", "0"])
    assert.strictEqual(out.code, 2)
    assert.include(JSON.parse(out.stderr).error.message, "--runs")
  })

  it("perf footprint reads the VMM's and the runtime's memory from /proc, and the disk's use", async () => {
    const out = await ma(["perf", "footprint", "--json", "w1"])
    assert.strictEqual(out.code, 0, out.stderr)
    const report = JSON.parse(out.stdout)
    const runtimePid = Number(
      NodeFs.readFileSync(NodePath.join(stateDir, "run", "runtime.pid"), "utf8").split(" ")[0]
    )
    assert.strictEqual(report.runtime.pid, runtimePid, "measured in the runtime")
    assert.isAbove(report.runtime.rssKiB, 1024)
    const [ws] = report.workspaces
    assert.strictEqual(ws.workspace, "w1")
    assert.isAbove(ws.vmm.rssKiB, 0)
    const status = NodeFs.readFileSync(`/proc/${ws.vmm.pid}/status`, "utf8")
    assert.include(status, "VmRSS")
    assert.isAtLeast(ws.rootfs.apparentBytes, 0)
    const all = JSON.parse((await ma(["perf", "footprint", "--json"])).stdout)
    assert.deepStrictEqual(
      all.workspaces.map((w: { workspace: string }) => w.workspace),
      ["w1"],
      "running ones"
    )
  })

  it("perf footprint of a workspace that is not running is a conflict, of none a not-found", async () => {
    const idle = await ma(["perf", "footprint", "--json", "idle"])
    assert.strictEqual(idle.code, 1)
    assert.strictEqual(JSON.parse(idle.stderr).error.kind, "conflict")
    const none = await ma(["perf", "footprint", "--json", "nope"])
    assert.strictEqual(JSON.parse(none.stderr).error.kind, "not_found")
  })
})

describe("connect with piped stdin on the fake backend", () => {
  it("feeds the shell and passes its exit code through", async () => {
    const out = await ma(["connect", "w1"], "echo piped; echo err >&2; exit 5\n")
    assert.deepStrictEqual([out.code, out.stdout, out.stderr], [5, "piped\n", "err\n"])
  })

  it("runs a given command", async () => {
    const out = await ma(["connect", "w1", "--", "sh", "-c", "cat; exit 2"], "through cat\n")
    assert.deepStrictEqual([out.code, out.stdout], [2, "through cat\n"])
  })

  it("refuses JSON output, bad detach keys and a workspace that is not running", async () => {
    assert.strictEqual((await ma(["connect", "--json", "w1"], "")).code, 2)
    const keys = await ma(["connect", "--detach-keys", "ctrl-1", "w1"], "")
    assert.strictEqual(keys.code, 2)
    assert.include(keys.stderr, "--detach-keys")
    const idle = await ma(["connect", "idle"], "")
    assert.strictEqual(idle.code, 1)
    assert.include(idle.stderr, "not running")
  })
})

/**
 * The command lines of the original's verbs that this CLI takes: their usage errors, and their
 * behaviour on the fake backend (stats, resize, --ttl, start --wait and overrides, perf steady).
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { cli, type CliResult, errorOf, stopRuntime } from "../support/cli.ts"

let stateDir: string
const ma = (args: ReadonlyArray<string>): CliResult =>
  cli(["--json", ...args], { stateDir, env: { MICROAGENT_BACKEND: "fake" } })
/** Without an explicit --json (connect refuses JSON output); piped, errors are JSON all the same. */
const plain = (args: ReadonlyArray<string>): CliResult =>
  cli(args, { stateDir, env: { MICROAGENT_BACKEND: "fake" } })

beforeAll(() => {
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-cli-parity-"))
})

afterAll(() => {
  ma(["delete", "--force", "p1"])
  stopRuntime(stateDir)
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

const usage = (result: CliResult, text: string) => {
  assert.strictEqual(result.code, 2, result.stderr)
  assert.include(errorOf(result).error.message, text)
}

describe("the original's verbs (fake backend)", () => {
  it("refuses what does not parse, naming the flag", () => {
    usage(ma(["create", "--ttl", "soon", "p0"]), "--ttl")
    usage(ma(["resize", "p0"]), "--size-mib")
    usage(plain(["connect", "--timeout", "5s", "p0"]), "--timeout needs --send")
    usage(ma(["stats", "--interval", "fast", "p0"]), "--interval")
    usage(ma(["perf", "steady", "--duration", "-1", "p0"]), "--duration")
  })

  it("create --ttl, start --wait with one-start resources, stats, resize refused while running", () => {
    const created = JSON.parse(ma(["create", "--ttl", "2h", "--entrypoint", "echo ready", "p1"]).stdout)
    const lease = Date.parse(created.expiresAt) - Date.parse(created.createdAt)
    assert.strictEqual(lease, 2 * 3600 * 1000)
    const started = ma(["start", "--wait", "--wait-timeout", "60s", "--memory", "1024", "--cpus", "1", "p1"])
    assert.strictEqual(started.code, 0, started.stderr)
    const [record, waited] = started.stdout.trim().split("\n").map((line) => JSON.parse(line))
    assert.strictEqual(record.state, "running")
    assert.strictEqual(record.resources.memoryMiB, 512, "the record keeps its own memory")
    assert.deepInclude(waited, { workspace: "p1", ok: true, entrypoint: "exited", exitCode: 0 })
    usage(ma(["start", "--wait-timeout", "5s", "p1"]), "--wait-timeout needs --wait")

    const sample = ma(["stats", "--interval", "100ms", "p1"])
    assert.strictEqual(sample.code, 0, sample.stderr)
    assert.strictEqual(JSON.parse(sample.stdout).workspace, "p1")
    const resizing = ma(["resize", "--size-mib", "512", "p1"])
    assert.strictEqual(resizing.code, 1)
    assert.strictEqual(errorOf(resizing).error.kind, "conflict")
    assert.strictEqual(ma(["kill", "--reason", "runaway loop", "p1"]).code, 0)
    const { events } = JSON.parse(ma(["events", "p1"]).stdout) as {
      events: Array<{ type: string; detail: string }>
    }
    assert.deepInclude(events.at(-1), { type: "kill", detail: "killed: runaway loop" })
    const missing = ma(["stats", "nope"])
    assert.strictEqual(errorOf(missing).error.kind, "not_found")
  }, 120_000)
})

/**
 * The first stage's fast path for `exec` answers exactly as the full CLI does. Each case runs twice —
 * fast, and with MICROAGENT_NO_FAST_PATH=1 — and the two must agree on stdout, stderr and exit code
 * (durations aside). A copy of the first stage without the main bundle beside it proves the fast path
 * really served a call: it cannot fall back.
 */
import * as NodeFs from "node:fs"
import * as Net from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { binPath, cliAsync, type CliResult, stopRuntime } from "../support/cli.ts"

let stateDir: string
let loneDir: string
let loneBin: string

const full = { MICROAGENT_NO_FAST_PATH: "1" }
/** Durations differ from run to run. */
const normal = (r: CliResult) => ({
  code: r.code,
  stdout: r.stdout.replace(/"durationMs":[0-9.]+/g, '"durationMs":0').replace(/"run-[a-z0-9-]+"/g, '"run-*"'),
  stderr: r.stderr
})

const both = async (args: ReadonlyArray<string>, env: Record<string, string> = {}) => {
  const fast = await cliAsync(args, { stateDir, env })
  const slow = await cliAsync(args, { stateDir, env: { ...env, ...full } })
  assert.deepStrictEqual(normal(fast), normal(slow), `microagent ${args.join(" ")}`)
  return fast
}

/** The first stage alone: anything but the fast path fails to load the CLI. */
const lone = (args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  new Promise<CliResult>((resolve) => {
    import("node:child_process").then(({ spawn }) => {
      const child = spawn(process.execPath, [loneBin, ...args], {
        env: { ...process.env, MICROAGENT_HOME: stateDir, MICROAGENT_OUTPUT: "", ...env }
      })
      let stdout = ""
      let stderr = ""
      child.stdout.on("data", (d) => (stdout += d))
      child.stderr.on("data", (d) => (stderr += d))
      child.on("close", (code) => resolve({ code: code ?? -1, stdout, stderr }))
    })
  })

beforeAll(async () => {
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-fast-"))
  loneDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-lone-"))
  loneBin = NodePath.join(loneDir, "microagent.mjs")
  NodeFs.copyFileSync(binPath, loneBin)
  for (
    const args of [["create", "--backend", "fake", "w1"], ["start", "w1"], [
      "create",
      "--backend",
      "fake",
      "idle"
    ]]
  ) {
    const result = await cliAsync(args, { stateDir, env: { MICROAGENT_RUNTIME_IDLE_SECONDS: "60" } })
    assert.strictEqual(result.code, 0, result.stderr)
  }
})

afterAll(async () => {
  await cliAsync(["delete", "--force", "w1", "idle"], { stateDir })
  stopRuntime(stateDir)
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
  NodeFs.rmSync(loneDir, { recursive: true, force: true })
})

describe("the run fast path", () => {
  it("serves a plain run by itself", async () => {
    const text = await lone([
      "run",
      "--backend",
      "fake",
      "alpine",
      "--",
      "sh",
      "-c",
      "echo out; echo err >&2; exit 4"
    ], {
      MICROAGENT_OUTPUT: "text"
    })
    assert.deepStrictEqual(text, { code: 4, stdout: "out\n", stderr: "err\n" })
    const kept = await lone([
      "run",
      "--json",
      "--backend",
      "fake",
      "--keep",
      "--name",
      "kept1",
      "alpine",
      "true"
    ])
    assert.strictEqual(kept.code, 0, kept.stderr)
    assert.deepStrictEqual([JSON.parse(kept.stdout).workspace, JSON.parse(kept.stdout).kept], ["kept1", true])
    const keptText = await lone(["run", "--backend", "fake", "--keep", "--name", "kept2", "alpine", "true"], {
      MICROAGENT_OUTPUT: "text"
    })
    assert.deepStrictEqual(keptText, { code: 0, stdout: "", stderr: "workspace: kept2\n" })
    await cliAsync(["delete", "--force", "kept1", "kept2"], { stateDir })
  })

  it("answers as the full CLI, flags and errors included", { timeout: 180_000 }, async () => {
    for (const output of ["text", "json"]) {
      const env = { MICROAGENT_OUTPUT: output, MICROAGENT_BACKEND: "fake" }
      await both(["run", "alpine", "--", "sh", "-c", "echo hi; exit 7"], env)
      await both(
        [
          "run",
          "--network",
          "isolated",
          "--memory",
          "256",
          "--cpus",
          "1",
          "-e",
          "A=1",
          "--profile",
          "tiny",
          "--rm",
          "alpine",
          "sh",
          "-c",
          "echo $A"
        ],
        env
      )
      await both(["run", "--timeout", "1", "alpine", "--", "sleep", "5"], env)
      await both(["run", "Not A Ref!", "--", "true"], env)
    }
  })

  it("leaves what it does not handle to the full CLI", { timeout: 180_000 }, async () => {
    for (
      const args of [
        ["run", "--backend", "fake"],
        ["run", "--backend", "fake", "--keep", "--rm", "alpine", "true"],
        ["run", "--backend", "fake", "--file", "/nonexistent.yaml", "alpine", "true"],
        ["run", "--backend", "fake", "--memory", "lots", "alpine", "true"]
      ]
    ) {
      await both(args, { MICROAGENT_OUTPUT: "json" })
      assert.include((await lone(args)).stderr, "microagent-main.cjs", args.join(" "))
    }
  })
})

describe("the exec fast path", () => {
  it("serves a plain exec by itself: output, stderr and the guest's exit code", async () => {
    const text = await lone(["exec", "w1", "--", "sh", "-c", "echo out; echo err >&2; exit 3"], {
      MICROAGENT_OUTPUT: "text"
    })
    assert.deepStrictEqual(text, { code: 3, stdout: "out\n", stderr: "err\n" })
    const json = await lone(["--json", "exec", "w1", "--", "true"])
    assert.strictEqual(json.code, 0, json.stderr)
    assert.strictEqual(JSON.parse(json.stdout).result.status, "exited")
  })

  it("answers as the full CLI in text and JSON, flags included", { timeout: 180_000 }, async () => {
    for (const output of ["text", "json"]) {
      const env = { MICROAGENT_OUTPUT: output }
      assert.strictEqual(
        (await both(["exec", "w1", "--", "sh", "-c", "echo hi; echo no >&2; exit 7"], env)).code,
        7
      )
      await both([
        "exec",
        "-e",
        "A=1",
        "--env",
        "B=two",
        "--cwd",
        "/",
        "w1",
        "--",
        "sh",
        "-c",
        'echo "$A $B"; pwd'
      ], env)
      await both(["exec", "w1", "sh", "-c", "printf 'é\\n'; exit 0"], env)
      await both(["exec", "--timeout", "1", "w1", "--", "sleep", "5"], env)
      await both(["exec", "w1", "--", "/no/such/program"], env)
    }
    await both(["exec", "--output", "json", "w1", "--", "echo", "x"])
    await both(["exec", "--output=text", "w1", "--", "echo", "x"])
  })

  it("reports classified errors with the same shape and exit code", { timeout: 180_000 }, async () => {
    for (const output of ["text", "json"]) {
      const env = { MICROAGENT_OUTPUT: output }
      const missing = await both(["exec", "nope", "--", "true"], env)
      assert.strictEqual(missing.code, 1)
      const halted = await both(["exec", "idle", "--", "true"], env)
      assert.strictEqual(halted.code, 1)
      assert.include(halted.stderr, "not running")
    }
    const served = await lone(["--json", "exec", "nope", "--", "true"])
    assert.strictEqual(served.code, 1)
    assert.strictEqual(JSON.parse(served.stderr).error.kind, "not_found")
  })

  it("leaves what it does not handle to the full CLI", { timeout: 180_000 }, async () => {
    // Usage errors (exit 2), flags it does not know, --stream and --stdin.
    for (
      const args of [
        ["exec", "w1"],
        ["exec", "-e", "1BAD=x", "w1", "--", "true"],
        ["exec", "--timeout", "soon", "w1", "--", "true"],
        ["exec", "--bogus", "w1", "--", "true"],
        ["exec", "--env=B=two", "--cwd", "/", "w1", "--", "true"],
        ["exec", "--stream", "w1", "--", "echo", "streamed"],
        ["exec", "--help"]
      ]
    ) {
      await both(args, { MICROAGENT_OUTPUT: "json" })
      const alone = await lone(args)
      assert.include(alone.stderr, "microagent-main.cjs", `${args.join(" ")} should need the full CLI`)
    }
    assert.strictEqual((await both(["exec", "w1"], { MICROAGENT_OUTPUT: "json" })).code, 2)
    const piped = await cliAsync(["exec", "--stdin", "-", "w1", "--", "cat"], { stateDir, input: "fed\n" })
    assert.strictEqual(JSON.parse(piped.stdout).result.stdout, "fed\n")
  })

  it("falls back to the full CLI, which starts the runtime, when none listens", async () => {
    const other = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-fast-none-"))
    try {
      const alone = await lone(["exec", "--state-dir", other, "w1", "--", "true"])
      assert.include(alone.stderr, "microagent-main.cjs")
      const result = await cliAsync(["exec", "--state-dir", other, "--json", "w1", "--", "true"], {
        stateDir
      })
      assert.strictEqual(result.code, 1)
      assert.strictEqual(JSON.parse(result.stderr).error.kind, "not_found")
    } finally {
      stopRuntime(other)
      NodeFs.rmSync(other, { recursive: true, force: true })
    }
  })

  it("a runtime lost mid-call is retryable (75) on both paths", async () => {
    const other = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-fast-lost-"))
    NodeFs.mkdirSync(NodePath.join(other, "run"), { mode: 0o700 })
    // A "runtime" that accepts, reads the request and hangs up.
    const server = Net.createServer((socket) => socket.once("data", () => socket.destroy()))
    await new Promise<void>((resolve) => server.listen(NodePath.join(other, "run", "runtime.sock"), resolve))
    try {
      const args = ["exec", "--state-dir", other, "--json", "w1", "--", "true"]
      const fast = await lone(args)
      const slow = await cliAsync(args, { stateDir, env: full })
      assert.strictEqual(fast.code, 75, fast.stderr)
      assert.strictEqual(slow.code, 75, slow.stderr)
      const [f, s] = [JSON.parse(fast.stderr).error, JSON.parse(slow.stderr).error]
      assert.deepStrictEqual([f.kind, f.retryable, f.retry_after_ms], [s.kind, s.retryable, s.retry_after_ms])
      assert.match(f.message, /^lost the connection to the runtime/)
    } finally {
      server.close()
      NodeFs.rmSync(other, { recursive: true, force: true })
    }
  })
})

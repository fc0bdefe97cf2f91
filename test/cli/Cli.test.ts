import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterEach, assert, beforeEach, describe, it } from "vitest"
import { cliAsync, errorOf, stopRuntime } from "../support/cli.ts"

let stateDir: string
const text = { MICROAGENT_OUTPUT: "text" }

beforeEach(() => {
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-cli-"))
})
afterEach(async () => {
  await cliAsync(["delete", "--force", ...(await listNames())], { stateDir })
  stopRuntime(stateDir)
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

const listNames = async (): Promise<Array<string>> => {
  const out = await cliAsync(["list", "--json"], { stateDir })
  if (out.code !== 0) return []
  return (JSON.parse(out.stdout) as { workspaces: Array<{ name: string }> }).workspaces.map((w) => w.name)
}

describe("the microagent CLI on the fake backend", () => {
  it("run prints the guest's output and passes its exit code through", async () => {
    const hi = await cliAsync(["run", "--backend", "fake", "alpine", "--", "echo", "hi"], {
      stateDir,
      env: text
    })
    assert.strictEqual(hi.stdout, "hi\n")
    assert.strictEqual(hi.code, 0)
    const seven = await cliAsync(["run", "--backend", "fake", "alpine", "--", "sh", "-c", "exit 7"], {
      stateDir,
      env: text
    })
    assert.strictEqual(seven.code, 7)
    assert.deepStrictEqual(await listNames(), [])
  })

  it("passes everything after the image to the guest verbatim, flags included", async () => {
    const out = await cliAsync([
      "run",
      "--backend",
      "fake",
      "alpine",
      "sh",
      "-c",
      'echo "$@"',
      "x",
      "--json",
      "--help",
      "-e",
      "A=1"
    ], {
      stateDir,
      env: text
    })
    assert.strictEqual(out.stdout, "--json --help -e A=1\n")
    assert.strictEqual(out.code, 0)
  })

  it("keeps state across separate processes: create, start, exec, halt, start, exec, delete", async () => {
    assert.strictEqual(
      (await cliAsync(["create", "--backend", "fake", "--image", "alpine", "-e", "WHO=world", "w1"], {
        stateDir
      })).code,
      0
    )
    assert.strictEqual((await cliAsync(["start", "w1"], { stateDir })).code, 0)
    const wrote = await cliAsync(["exec", "w1", "--", "sh", "-c", "echo hello $WHO > tmp/note"], { stateDir })
    assert.strictEqual(wrote.code, 0, wrote.stderr)
    const stopped = await cliAsync(["stop", "w1"], { stateDir })
    assert.strictEqual(stopped.code, 0, stopped.stderr)
    const inspected = JSON.parse((await cliAsync(["status", "w1", "--json"], { stateDir })).stdout)
    assert.strictEqual(inspected.workspace.state, "halted")
    assert.strictEqual((await cliAsync(["start", "w1"], { stateDir })).code, 0)
    const read = await cliAsync(["exec", "w1", "--", "cat", "tmp/note"], { stateDir, env: text })
    assert.strictEqual(read.stdout, "hello world\n")
    const refused = await cliAsync(["rm", "w1"], { stateDir })
    assert.strictEqual(refused.code, 1)
    assert.strictEqual(errorOf(refused).error.kind, "conflict")
    const deleted = await cliAsync(["rm", "--yes", "w1", "--json"], { stateDir })
    assert.deepStrictEqual(JSON.parse(deleted.stdout), { workspace: "w1", deleted: true })
    const again = await cliAsync(["delete", "w1", "--json"], { stateDir })
    assert.strictEqual(again.code, 0)
    assert.deepStrictEqual(JSON.parse(again.stdout), { workspace: "w1", deleted: false })
  })

  it("prints JSON when piped and the documented shapes", async () => {
    await cliAsync(["create", "--backend", "fake", "--image", "alpine", "--profile", "small", "j1"], {
      stateDir
    })
    const list = JSON.parse((await cliAsync(["ls"], { stateDir })).stdout)
    assert.deepStrictEqual(Object.keys(list), ["workspaces"])
    assert.deepStrictEqual(
      Object.keys(list.workspaces[0]).sort(),
      ["backend", "image", "name", "network", "observed_at", "profile", "restart", "state"]
    )
    assert.strictEqual(list.workspaces[0].profile, "small")
    const events = JSON.parse((await cliAsync(["events", "j1"], { stateDir })).stdout)
    assert.strictEqual(events.events[0].type, "created")
    const ran = JSON.parse(
      (await cliAsync(
        ["run", "--backend", "fake", "alpine", "--", "sh", "-c", "echo o; echo e >&2; exit 3"],
        {
          stateDir
        }
      )).stdout
    )
    assert.deepStrictEqual(
      {
        stdout: ran.result.stdout,
        stderr: ran.result.stderr,
        exitCode: ran.result.exitCode,
        status: ran.result.status
      },
      { stdout: "o\n", stderr: "e\n", exitCode: 3, status: "exited" }
    )
    const textList = (await cliAsync(["list"], { stateDir, env: text })).stdout
    assert.match(
      textList,
      /^NAME\s+STATE\s+BACKEND\s+PROFILE\s+NETWORK\s+IMAGE\nj1\s+prepared\s+fake\s+small\s+user\s+alpine\n$/
    )
  })

  it("exit codes: 2 for usage, 1 for failures, with a classified error", async () => {
    const unknown = await cliAsync(["lsit"], { stateDir })
    assert.strictEqual(unknown.code, 2)
    assert.include(errorOf(unknown).error.remediation, "microagent list")
    assert.strictEqual((await cliAsync(["exec"], { stateDir })).code, 2)
    assert.strictEqual(
      (await cliAsync(["create", "--backend", "fake", "--image", "alpine", "bad/name"], { stateDir })).code,
      2
    )
    assert.strictEqual((await cliAsync(["run", "--backend", "nope", "alpine"], { stateDir })).code, 2)
    // A bad count is said before the workspace is looked up (it does not exist either).
    const badCount = await cliAsync(["fork", "--count", "17", "ghost"], { stateDir })
    assert.strictEqual(badCount.code, 2)
    assert.include(errorOf(badCount).error.message, "a fork makes 1 to 16 children")
    const missing = await cliAsync(["inspect", "ghost"], { stateDir })
    assert.strictEqual(missing.code, 1)
    assert.deepStrictEqual(errorOf(missing).error, {
      kind: "not_found",
      message: "workspace ghost not found",
      remediation: "`microagent list` shows the workspaces of this state directory",
      retryable: false
    })
    const textError = await cliAsync(["inspect", "ghost"], { stateDir, env: text })
    assert.strictEqual(
      textError.stderr,
      "error: workspace ghost not found\n  `microagent list` shows the workspaces of this state directory\n"
    )
    const badSpec = NodePath.join(stateDir, "bad.yaml")
    NodeFs.writeFileSync(badSpec, "image: alpine\nresource:\n  memoryMiB: 1\n")
    const spec = await cliAsync(["create", "--backend", "fake", "--file", badSpec], { stateDir })
    assert.strictEqual(spec.code, 2)
    assert.strictEqual(errorOf(spec).error.message, `bad.yaml: unknown top-level field "resource"`)
  })

  it("wait times out with exit 75 (retryable) on a running workspace", async () => {
    await cliAsync(["create", "--backend", "fake", "--image", "alpine", "busy"], { stateDir })
    await cliAsync(["start", "busy"], { stateDir })
    const waited = await cliAsync(["wait", "--timeout", "1", "busy"], { stateDir })
    assert.strictEqual(waited.code, 75)
    assert.strictEqual(errorOf(waited).error.retryable, true)
    await cliAsync(["kill", "busy"], { stateDir })
    const settled = await cliAsync(["wait", "busy"], { stateDir })
    assert.deepStrictEqual(JSON.parse(settled.stdout), { workspace: "busy", state: "stopped", ok: true })
  })

  it("takes durations as 30s, 5m, 500ms or seconds, and refuses others naming the flag", async () => {
    await cliAsync(["create", "--backend", "fake", "--image", "alpine", "clock"], { stateDir })
    await cliAsync(["start", "clock"], { stateDir })
    const waited = await cliAsync(["wait", "--timeout", "700ms", "--interval", "100ms", "clock"], {
      stateDir
    })
    assert.strictEqual(waited.code, 75)
    assert.match(errorOf(waited).error.message, /within 700ms/)
    const slow = await cliAsync(["exec", "--timeout", "0.5s", "clock", "--", "sleep", "5"], { stateDir })
    assert.strictEqual(slow.code, 124)
    assert.strictEqual(JSON.parse(slow.stdout).result.status, "timed_out")
    for (
      const [flag, value, says] of [
        ["--timeout", "5x", `"x" is not a unit`],
        ["--timeout", "-1s", "negative"],
        ["--timeout", "0s", "longer than zero"]
      ] as const
    ) {
      const bad = await cliAsync(["exec", flag, value, "clock", "--", "true"], { stateDir })
      assert.strictEqual(bad.code, 2, bad.stderr)
      assert.include(errorOf(bad).error.message, says)
      assert.include(errorOf(bad).error.message, "--timeout")
    }
    await cliAsync(["kill", "clock"], { stateDir })
  })

  it("exec and run keep only --stdout-limit / --stderr-limit bytes and flag the rest", async () => {
    const out = await cliAsync([
      "run",
      "--backend",
      "fake",
      "--stdout-limit",
      "5",
      "--stderr-limit",
      "0",
      "alpine",
      "--",
      "sh",
      "-c",
      "echo hello world; echo oops >&2"
    ], { stateDir })
    assert.strictEqual(out.code, 0, out.stderr)
    const result = JSON.parse(out.stdout).result
    assert.strictEqual(result.stdout, "hello")
    assert.isTrue(result.stdoutTruncated)
    assert.strictEqual(result.stderr, "")
    assert.isTrue(result.stderrTruncated)
    const negative = await cliAsync([
      "run",
      "--backend",
      "fake",
      "--stdout-limit",
      "-1",
      "alpine",
      "--",
      "true"
    ], {
      stateDir
    })
    assert.strictEqual(negative.code, 2)
    assert.include(errorOf(negative).error.message, "--stdout-limit")
  })

  it("version prints the release with build metadata, and JSON when asked", async () => {
    const plain = await cliAsync(["version"], { stateDir })
    assert.match(plain.stdout, /^\d+\.\d+\.\d+(\+\d+\.[0-9a-f]{12}\.\d{8}(\.dirty)?)?\n$/)
    const json = await cliAsync(["--json", "version"], { stateDir })
    const parsed = JSON.parse(json.stdout) as { version: string; node: string; platform: string }
    assert.strictEqual(`${parsed.version}\n`, plain.stdout)
    assert.strictEqual(parsed.node, process.version)
  })

  // Thirteen CLI processes: slow on a loaded host.
  it("help never performs the operation, wherever it stands", async () => {
    await cliAsync(["create", "--backend", "fake", "--image", "alpine", "keepme"], { stateDir })
    await cliAsync(["start", "keepme"], { stateDir })
    for (
      const args of [["delete", "--force", "keepme", "--help"], ["kill", "-h", "keepme"], ["help", "halt"]]
    ) {
      const out = await cliAsync(args, { stateDir })
      assert.strictEqual(out.code, 0)
      assert.match(out.stdout, /^Usage: microagent /)
    }
    assert.strictEqual(
      JSON.parse((await cliAsync(["inspect", "keepme"], { stateDir })).stdout).workspace.state,
      "running"
    )
    const fresh = NodePath.join(stateDir, "never-created")
    for (const args of [[], ["--help"], ["help"], ["run", "--help"], ["list", "--help"]]) {
      const out = await cliAsync(args, { stateDir: fresh })
      assert.strictEqual(out.code, 0)
    }
    assert.isFalse(NodeFs.existsSync(fresh), "help must not open the state directory")
    const top = (await cliAsync(["help"], { stateDir })).stdout
    for (const group of ["Run:", "Lifecycle:", "Observe:"]) assert.include(top, group)
  }, 120_000)

  it("two starts of one workspace from two processes: one wins, the other gets conflict", async () => {
    await cliAsync(["create", "--backend", "fake", "--image", "alpine", "race"], { stateDir })
    const results = await Promise.all([1, 2, 3, 4].map(() => cliAsync(["start", "race"], { stateDir })))
    const winners = results.filter((r) => r.code === 0)
    const losers = results.filter((r) => r.code !== 0)
    assert.strictEqual(winners.length, 1, JSON.stringify(results))
    for (const loser of losers) {
      assert.strictEqual(loser.code, 1)
      assert.strictEqual(errorOf(loser).error.kind, "conflict")
    }
    const state = JSON.parse((await cliAsync(["inspect", "race"], { stateDir })).stdout).workspace
    assert.strictEqual(state.state, "running")
    // Exactly one VMM was launched: the recorded one.
    const starts = JSON.parse((await cliAsync(["events", "race"], { stateDir })).stdout).events.filter((
      e: { type: string }
    ) => e.type === "booted")
    assert.strictEqual(starts.length, 1)
  })

  it("state files are private: directories 0700, files 0600", async () => {
    await cliAsync(["run", "--backend", "fake", "--keep", "--name", "priv", "alpine", "--", "true"], {
      stateDir
    })
    const walk = (dir: string): Array<string> =>
      NodeFs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
        const path = NodePath.join(dir, entry.name)
        return entry.isDirectory() && !path.includes("/rootfs/") && !path.endsWith("/rootfs")
          ? [path, ...walk(path)]
          : [path]
      })
    for (const path of walk(stateDir)) {
      const mode = NodeFs.statSync(path).mode & 0o777
      const stat = NodeFs.statSync(path)
      assert.strictEqual(mode & 0o077, 0, `${path} is ${mode.toString(8)}`)
      if (stat.isFile()) assert.strictEqual(mode, 0o600, path)
    }
    assert.strictEqual(NodeFs.statSync(stateDir).mode & 0o777, 0o700)
  })

  it("doctor names the package that installs a missing tool, and fails when a required one is missing", async () => {
    const present = await cliAsync(["doctor", "--json"], { stateDir })
    const report = JSON.parse(present.stdout) as {
      ok: boolean
      checks: Array<{ name: string; ok: boolean; remediation?: string }>
    }
    assert.strictEqual(present.code, report.ok ? 0 : 1)
    const bare = await cliAsync(["doctor", "--json"], {
      stateDir,
      env: { PATH: NodePath.join(stateDir, "empty") }
    })
    assert.strictEqual(bare.code, 1)
    const checks = (JSON.parse(bare.stdout) as typeof report).checks
    const qemu = checks.find((c) => c.name === "qemu")!
    assert.isFalse(qemu.ok)
    assert.strictEqual(qemu.remediation, "apt-get install qemu-system-x86")
    assert.strictEqual(checks.find((c) => c.name === "lz4")!.remediation, "apt-get install lz4")
  })
})

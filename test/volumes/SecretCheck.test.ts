/**
 * `microagent secret check` through the real CLI: each reference's scheme and size, never its value.
 */
import { spawnSync } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, describe, it } from "vitest"
import { binPath, cli } from "../support/cli.ts"

const stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-secret-check-"))
const file = NodePath.join(stateDir, "token")
NodeFs.writeFileSync(file, "file-value-123")

afterAll(() => NodeFs.rmSync(stateDir, { recursive: true, force: true }))

describe("secret check", () => {
  it("reports scheme and size per reference, exit 1 if any fails, and never prints a value", () => {
    const result = cli(
      ["secret", "check", "A=env:MA_CHECK_VALUE", `B=file:${file}`, "C=env:MA_CHECK_UNSET"],
      {
        stateDir,
        env: { MA_CHECK_VALUE: "env-value-42" }
      }
    )
    assert.strictEqual(result.code, 1, result.stderr)
    const reports = JSON.parse(result.stdout)
    assert.deepStrictEqual(reports.slice(0, 2), [
      { name: "A", ok: true, source: "env", bytes: 12 },
      { name: "B", ok: true, source: "file", bytes: 14 }
    ])
    assert.strictEqual(reports[2].ok, false)
    assert.match(reports[2].error, /MA_CHECK_UNSET is not set/)
    assert.notInclude(result.stdout + result.stderr, "env-value-42")
    assert.notInclude(result.stdout + result.stderr, "file-value-123")
    const fine = cli(["secret", "check", "A=env:MA_CHECK_VALUE"], { stateDir, env: { MA_CHECK_VALUE: "v" } })
    assert.strictEqual(fine.code, 0, fine.stderr)
  })

  it("a secret file the caller cannot read fails run before anything is made, saying why", () => {
    // Root reads every file, so the command runs as nobody; anyone else reads no file of mode 000.
    const asRoot = process.getuid?.() === 0
    const secret = NodePath.join(stateDir, "root-only")
    NodeFs.writeFileSync(secret, "unreadable-value-7", { mode: asRoot ? 0o600 : 0o000 })
    const state = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-secret-unreadable-"))
    try {
      if (asRoot) NodeFs.chownSync(state, 65534, 65534)
      const argv = [
        process.execPath,
        binPath,
        "--state-dir",
        state,
        "--json",
        "run",
        "--backend",
        "fake",
        "--secret",
        `TOKEN=file:${secret}`,
        "--",
        "true"
      ]
      const result = asRoot
        ? spawnSync("runuser", ["-u", "nobody", "--", ...argv], { encoding: "utf8", cwd: "/" })
        : spawnSync(argv[0]!, argv.slice(1), { encoding: "utf8" })
      assert.strictEqual(result.status, 2, result.stderr)
      const error = JSON.parse(result.stderr.trim().split("\n").at(-1)!).error
      assert.match(error.message, /TOKEN/)
      assert.match(error.message, /permission denied|EACCES/i)
      assert.notInclude(result.stdout + result.stderr, "unreadable-value-7")
      // Nothing was made: no workspace directory, no runtime started.
      const made = NodeFs.readdirSync(state)
      assert.notInclude(made, "workspaces", made.join(","))
      assert.isFalse(NodeFs.existsSync(NodePath.join(state, "run", "runtime.pid")))
    } finally {
      NodeFs.rmSync(state, { recursive: true, force: true })
    }
  })
})

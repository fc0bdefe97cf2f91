/**
 * `microagent secret check` through the real CLI: each reference's scheme and size, never its value.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, describe, it } from "vitest"
import { cli } from "../support/cli.ts"

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
})

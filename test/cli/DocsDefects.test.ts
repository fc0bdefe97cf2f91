/**
 * Defects found by following the docs as a new user: output flags typed after a workspace name, a
 * followed log piped into another program, and a second `runtime` for one state directory.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { cliAsync, stopRuntime } from "../support/cli.ts"

let stateDir: string

beforeAll(async () => {
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-docs-defects-"))
  const created = await cliAsync(["create", "--backend", "fake", "--image", "alpine", "web"], { stateDir })
  assert.strictEqual(created.code, 0, created.stderr)
  const started = await cliAsync(["start", "web"], { stateDir })
  assert.strictEqual(started.code, 0, started.stderr)
})
afterAll(async () => {
  await cliAsync(["delete", "--force", "web"], { stateDir })
  stopRuntime(stateDir)
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("flags and output modes as the docs use them", () => {
  it("--json right after the workspace is microagent's, not the guest's command", async () => {
    const out = await cliAsync(["exec", "web", "--json", "--", "echo", "hi"], { stateDir })
    assert.strictEqual(out.code, 0, out.stderr)
    const body = JSON.parse(out.stdout) as { result: { stdout: string; exitCode: number } }
    assert.strictEqual(body.result.exitCode, 0)
    const text = await cliAsync(["exec", "web", "--output", "text", "echo", "hi"], { stateDir })
    assert.strictEqual(text.stdout, "hi\n")
    // Past the first guest word, flags belong to the guest verbatim.
    const verbatim = await cliAsync(["exec", "web", "--output", "text", "echo", "--json"], { stateDir })
    assert.strictEqual(verbatim.stdout, "--json\n")
  })

  it("logs -f into a pipe streams text; only an explicit --json is refused", async () => {
    await cliAsync(["halt", "web"], { stateDir })
    const piped = await cliAsync(["logs", "-f", "web"], { stateDir })
    assert.strictEqual(piped.code, 0, piped.stderr)
    assert.notInclude(piped.stdout, '{"logs"')
    const explicit = await cliAsync(["logs", "-f", "--json", "web"], { stateDir })
    assert.strictEqual(explicit.code, 2)
    assert.include(explicit.stdout + explicit.stderr, "--output json")
    await cliAsync(["start", "web"], { stateDir })
  })

  it("a second runtime for one state directory says that one is serving", async () => {
    const first = await cliAsync(["exec", "web", "--output", "text", "true"], { stateDir })
    assert.strictEqual(first.code, 0, first.stderr)
    const second = await cliAsync(["runtime"], { stateDir })
    assert.strictEqual(second.code, 0)
    assert.include(second.stderr, "already serves")
  })
})

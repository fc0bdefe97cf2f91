/**
 * A runtime stopped (SIGTERM) while it serves a call ends that call: the caller must get a retryable
 * `transient` error saying so, from the fast path (`exec` with plain flags) and from the full CLI
 * alike, not an internal error or a silent exit 130 as if the user had pressed Ctrl-C.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, describe, it } from "vitest"
import { cliAsync, errorOf, stopRuntime } from "../support/cli.ts"

const stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-stopped-"))
const env = { MICROAGENT_BACKEND: "fake" }
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
const runtimePid = () =>
  Number(NodeFs.readFileSync(NodePath.join(stateDir, "run", "runtime.pid"), "utf8").split(" ")[0])

afterAll(async () => {
  // The workspaces' fake VMMs are detached processes: they go with their workspaces, not the directory.
  for (const name of ["w1", "w2"]) await cliAsync(["delete", "--force", name], { stateDir, env })
  stopRuntime(stateDir)
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("a runtime stopped while it serves a call", () => {
  it.each([
    ["the fast path", "w1", []],
    ["the full CLI", "w2", ["--stdout-limit", "4096"]]
  ])("%s reports transient with exit 75", async (_, name, flags) => {
    for (const verb of ["create", "start"]) {
      const done = await cliAsync([verb, name], { stateDir, env })
      assert.strictEqual(done.code, 0, done.stderr)
    }
    const args = ["exec", ...flags, name, "--", "sh", "-c", "sleep 5; echo late"]
    const call = cliAsync(args, { stateDir, env })
    await sleep(1500)
    process.kill(runtimePid(), "SIGTERM")
    const result = await call
    assert.strictEqual(result.code, 75, result.stderr)
    const { error } = errorOf(result)
    assert.strictEqual(error.kind, "transient")
    assert.include(error.message, "the runtime stopped before it finished this request")
    assert.isTrue(error.retryable)
  }, 60_000)
})

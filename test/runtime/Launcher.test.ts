/**
 * The runtime's process environment: one malloc arena for the runtime itself (its RSS stays flat over a
 * soak of runs), never passed on to the processes it starts (VMMs, tools); and its V8 flags, which bound
 * the compiled code a long-lived runtime accumulates.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, describe, it } from "vitest"
import { runtimeEnvironment, runtimeNodeFlags } from "../../src/rpc/Launcher.ts"
import { cliAsync, stopRuntime } from "../support/cli.ts"

const environOf = (pid: number): Record<string, string> =>
  Object.fromEntries(
    NodeFs.readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").filter(Boolean).map((entry) => {
      const eq = entry.indexOf("=")
      return [entry.slice(0, eq), entry.slice(eq + 1)]
    })
  )

const childrenOf = (pid: number): Array<number> =>
  NodeFs.readdirSync("/proc").filter((name) => /^\d+$/.test(name)).flatMap((name) => {
    try {
      const stat = NodeFs.readFileSync(`/proc/${name}/stat`, "utf8")
      // The fields after the command name (which may hold spaces) start with state, then ppid.
      return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid ? [Number(name)] : []
    } catch {
      return []
    }
  })

const stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-launcher-"))

afterAll(async () => {
  await cliAsync(["delete", "--force", "w"], { stateDir, env: { MICROAGENT_BACKEND: "fake" } })
  stopRuntime(stateDir)
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("the runtime's environment", () => {
  it("gets MALLOC_ARENA_MAX=1 unless the user chose a value", () => {
    const chosen = runtimeEnvironment({ PATH: "/bin" })
    assert.strictEqual(chosen.MALLOC_ARENA_MAX, "1")
    assert.strictEqual(chosen.MICROAGENT_OUTPUT, "json")
    const users = runtimeEnvironment({ PATH: "/bin", MALLOC_ARENA_MAX: "4" })
    assert.strictEqual(users.MALLOC_ARENA_MAX, "4")
    assert.isUndefined(users.MICROAGENT_RUNTIME_MALLOC_ARENA)
  })

  it("the runtime runs with one arena; the VMMs it starts do not inherit the setting", async () => {
    const options = { stateDir, env: { MICROAGENT_BACKEND: "fake" } }
    assert.strictEqual((await cliAsync(["create", "--image", "alpine", "w"], options)).code, 0)
    const started = await cliAsync(["start", "w"], options)
    assert.strictEqual(started.code, 0, started.stderr)
    const runtime = Number(
      NodeFs.readFileSync(NodePath.join(stateDir, "run", "runtime.pid"), "utf8").split(" ")[0]
    )
    assert.strictEqual(environOf(runtime).MALLOC_ARENA_MAX, "1")
    // Started with the runtime's V8 flags, without V8's compilers among them.
    const argv = NodeFs.readFileSync(`/proc/${runtime}/cmdline`, "utf8").split("\0")
    assert.includeMembers(argv, [...runtimeNodeFlags, "--jitless"])
    const vmms = childrenOf(runtime)
    assert.isAbove(vmms.length, 0, "the fake VMM is a child of the runtime")
    for (const vmm of vmms) {
      assert.isUndefined(environOf(vmm).MALLOC_ARENA_MAX, `process ${vmm}`)
      assert.isUndefined(environOf(vmm).MICROAGENT_RUNTIME_MALLOC_ARENA, `process ${vmm}`)
    }
  })
})

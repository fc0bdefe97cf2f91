/**
 * A runtime leaving when idle does not cut a client that found its socket at that moment. The runtime
 * is held at the step where it has decided to go (a fault point), a `run` connects and is in flight
 * when it is let go: the run must finish, and the next command is served by a new runtime.
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, describe, it } from "vitest"
import { binPath, cliAsync, stopRuntime } from "../support/cli.ts"

const stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-idle-"))
const faultDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-idle-fault-"))
const marker = NodePath.join(faultDir, "runtime.leaving")
const env = { MICROAGENT_BACKEND: "fake", MICROAGENT_RUNTIME_IDLE_SECONDS: "1" }
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

afterAll(() => {
  NodeFs.rmSync(marker, { force: true })
  stopRuntime(stateDir)
  for (const dir of [stateDir, faultDir]) NodeFs.rmSync(dir, { recursive: true, force: true })
})

describe("a runtime leaving when idle", () => {
  it("serves to its end a command that connected as it decided to go", async () => {
    // The runtime this starts carries the armed environment.
    const first = await cliAsync(["run", "alpine", "--", "true"], {
      stateDir,
      env: { ...env, MICROAGENT_FAULT_PAUSE: "runtime.leaving", MICROAGENT_FAULT_DIR: faultDir }
    })
    assert.strictEqual(first.code, 0, first.stderr)
    for (let i = 0; i < 300 && !NodeFs.existsSync(marker); i++) await sleep(100)
    assert.isTrue(NodeFs.existsSync(marker), "the runtime never found itself idle")
    const leaving = Number(NodeFs.readFileSync(marker, "utf8").trim())

    const inFlight = NodeChild.spawn(process.execPath, [
      binPath,
      "run",
      "alpine",
      "--",
      "sh",
      "-c",
      "sleep 2; echo done"
    ], {
      env: { ...process.env, ...env, MICROAGENT_HOME: stateDir, MICROAGENT_OUTPUT: "text" },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    inFlight.stdout.on("data", (d) => (stdout += d))
    inFlight.stderr.on("data", (d) => (stderr += d))
    const exited = new Promise<number>((resolve) => inFlight.on("close", (code) => resolve(code ?? -1)))
    // Let go while the run's command sleeps in the (fake) guest.
    await sleep(1500)
    NodeFs.rmSync(marker)
    assert.strictEqual(await exited, 0, stderr)
    assert.strictEqual(stdout, "done\n")

    // The leaving runtime is gone; the next command starts and uses a new one.
    for (let i = 0; i < 100 && isAlive(leaving); i++) await sleep(100)
    assert.isFalse(isAlive(leaving), "the idle runtime did not exit")
    const next = await cliAsync(["run", "alpine", "--", "true"], { stateDir, env })
    assert.strictEqual(next.code, 0, next.stderr)
  }, 120_000)
})

const isAlive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

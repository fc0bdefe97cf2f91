/**
 * A runtime killed with -9 while it writes: 100 concurrent writes (creates, and runs that record
 * their events) against a real runtime process on the fake backend, SIGKILL part way, then
 * `state check` (the full integrity_check) must be clean and the store usable.
 */
import { Effect, Exit, Ref } from "effect"
import { spawn } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterEach, assert, beforeEach, describe, it } from "vitest"
import { MicroagentClient } from "../../src/rpc/Client.ts"
import { answers } from "../../src/rpc/Launcher.ts"
import { binPath, cliAsync, stopRuntime } from "../support/cli.ts"
import { killFakeVmms } from "../support/fakeEnvironment.ts"

let stateDir: string

beforeEach(() => {
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-state-crash-"))
})
afterEach(async () => {
  stopRuntime(stateDir)
  await Effect.runPromise(killFakeVmms(stateDir))
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("a runtime killed during writes", () => {
  it("kill -9 during 100 concurrent writes: state check is clean afterwards", async () => {
    const runtime = spawn(process.execPath, [binPath, "runtime", "--idle-seconds", "300"], {
      env: { ...process.env, MICROAGENT_HOME: stateDir, MICROAGENT_BACKEND: "fake" },
      stdio: "ignore"
    })
    const exited = new Promise<NodeJS.Signals | null>((resolve) =>
      runtime.on("exit", (_, signal) => resolve(signal))
    )
    const socket = NodePath.join(stateDir, "run", "runtime.sock")
    for (let i = 0; i < 600 && !(await Effect.runPromise(answers(socket))); i++) {
      await new Promise((r) => setTimeout(r, 50))
    }

    const outcome = await Effect.runPromise(
      Effect.gen(function*() {
        const client = yield* MicroagentClient
        const done = yield* Ref.make(0)
        const acknowledged = yield* Ref.make<ReadonlyArray<string>>([])
        const write = (i: number) =>
          (i % 2 === 0
            ? client.create({ image: "alpine", name: `c${i}` }).pipe(
              Effect.tap(() => Ref.update(acknowledged, (names) => [...names, `c${i}`])),
              Effect.asVoid
            )
            : Effect.asVoid(client.run({ image: "alpine", name: `r${i}`, command: ["true"] }))).pipe(
              Effect.tap(() => Ref.update(done, (n) => n + 1)),
              Effect.timeout("30 seconds"),
              Effect.exit
            )
        const killer = Effect.gen(function*() {
          while ((yield* Ref.get(done)) < 10) yield* Effect.sleep("5 millis")
          const at = yield* Ref.get(done)
          runtime.kill("SIGKILL")
          return at
        })
        const [exits, doneAtKill] = yield* Effect.all([
          Effect.forEach(Array.from({ length: 100 }, (_, i) => i), write, { concurrency: "unbounded" }),
          killer
        ], { concurrency: 2 })
        return {
          succeeded: exits.filter(Exit.isSuccess).length,
          doneAtKill,
          created: yield* Ref.get(acknowledged)
        }
      }).pipe(Effect.provide(MicroagentClient.layer({ socket })), Effect.scoped)
    )

    assert.strictEqual(await exited, "SIGKILL")
    // Killed part way: some writes had finished, others were still going.
    assert.isAtLeast(outcome.doneAtKill, 10)
    assert.isBelow(outcome.succeeded, 100)

    const env = { MICROAGENT_BACKEND: "fake", MICROAGENT_OUTPUT: "json" }
    const check = await cliAsync(["state", "check"], { stateDir, env })
    assert.strictEqual(check.code, 0, `${check.stdout}${check.stderr}`)
    const report = JSON.parse(check.stdout)
    assert.isTrue(report.ok)
    assert.deepStrictEqual(report.problems, [])
    // Every create that was acknowledged is there.
    const listed = await cliAsync(["list"], { stateDir, env })
    assert.strictEqual(listed.code, 0, listed.stderr)
    const names = new Set(JSON.parse(listed.stdout).workspaces.map((w: { name: string }) => w.name))
    assert.isNotEmpty(outcome.created)
    for (const name of outcome.created) assert.isTrue(names.has(name), `${name} was acknowledged`)
  }, 240_000)
})

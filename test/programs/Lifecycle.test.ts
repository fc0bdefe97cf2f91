import { SqlClient } from "@effect/sql"
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Fiber, Option, Stream } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { ExecRequest } from "../../src/domain/Exec.ts"
import { isAlive } from "../../src/layers/process/Processes.ts"
import { create } from "../../src/programs/Create.ts"
import { remove } from "../../src/programs/Delete.ts"
import { exec, execStream } from "../../src/programs/Exec.ts"
import { halt, kill } from "../../src/programs/Halt.ts"
import { vmHandleOf } from "../../src/programs/internal/Reconcile.ts"
import { events, inspect, list, wait } from "../../src/programs/Observe.ts"
import { run } from "../../src/programs/Run.ts"
import { start } from "../../src/programs/Start.ts"
import { Home } from "../../src/services/Home.ts"
import { Hypervisor } from "../../src/services/Hypervisor.ts"
import { StateStore } from "../../src/services/StateStore.ts"
import { fakeEnvironment } from "../support/fakeEnvironment.ts"

const sh = (script: string) => new ExecRequest({ argv: ["sh", "-c", script] })

const filesUnder = (dir: string): Array<string> =>
  NodeFs.existsSync(dir) ? (NodeFs.readdirSync(dir, { recursive: true }) as Array<string>) : []

describe("lifecycle programs on the fake backend", () => {
  it.scopedLive("run returns the guest's exit code and output, and leaves nothing behind", () =>
    Effect.gen(function*() {
      const ok = yield* run({ image: "alpine", command: ["echo", "hi"] })
      assert.strictEqual(ok.result.exitCode, 0)
      assert.strictEqual(ok.result.stdout, "hi\n")
      const seven = yield* run({ image: "alpine", command: ["sh", "-c", "echo out; echo err >&2; exit 7"] })
      assert.strictEqual(seven.result.status, "exited")
      assert.strictEqual(seven.result.exitCode, 7)
      assert.strictEqual(seven.result.stderr, "err\n")
      const signaled = yield* run({ image: "alpine", command: ["sh", "-c", "kill -9 $$"] })
      assert.strictEqual(signaled.result.status, "signaled")
      assert.strictEqual(signaled.result.exitCode, 137)
      const missing = yield* run({ image: "alpine", command: ["/no/such/binary"] })
      assert.strictEqual(missing.result.status, "failed_to_start")
      assert.strictEqual(missing.result.exitCode, 127)
      const home = yield* Home
      assert.deepStrictEqual(yield* list(), [])
      assert.deepStrictEqual(filesUnder(home.workspaces), [])
      assert.deepStrictEqual(filesUnder(NodePath.join(home.root, "run")), [])
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("run with keep leaves a halted workspace; without a command and no image Cmd it is a usage error", () =>
    Effect.gen(function*() {
      const kept = yield* run({ image: "alpine", command: ["true"], keep: true, name: "kept" })
      assert.strictEqual(kept.workspace, "kept")
      const { workspace } = yield* inspect("kept")
      assert.strictEqual(workspace.state, "halted")
      const failed = yield* Effect.exit(run({ image: "alpine", command: [], name: "nocmd" }))
      assert.isTrue(Exit.isFailure(failed))
      assert.strictEqual(
        Exit.isFailure(failed) && Option.getOrThrow(Cause.failureOption(failed.cause))._tag,
        "InvalidInput"
      )
      const store = yield* StateStore
      assert.isTrue(Option.isNone(yield* store.find("nocmd")))
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("create, start, exec, halt, start, exec, delete keeps the disk across boots", () =>
    Effect.gen(function*() {
      const created = yield* create({
        image: "alpine",
        name: "w1",
        profile: "tiny",
        env: { GREETING: "hello" }
      })
      assert.strictEqual(created.state, "prepared")
      assert.deepStrictEqual(created.resources.memoryMiB, 256)
      yield* start("w1")
      const written = yield* exec(
        "w1",
        new ExecRequest({ argv: ["sh", "-c", "echo $GREETING > tmp/file"], env: { GREETING: "hello" } })
      )
      assert.strictEqual(written.exitCode, 0)
      const halted = yield* halt("w1")
      assert.strictEqual(halted.state, "halted")
      assert.isUndefined(halted.vm)
      const conflict = yield* Effect.flip(exec("w1", sh("true")))
      assert.strictEqual(conflict._tag, "Conflict")
      assert.include(conflict.message, "halted, not running")
      yield* start("w1")
      const read = yield* exec("w1", sh("cat tmp/file"))
      assert.strictEqual(read.stdout, "hello\n")
      const refused = yield* Effect.flip(remove("w1"))
      assert.strictEqual(refused._tag, "Conflict")
      const handle = Option.getOrThrow(vmHandleOf((yield* inspect("w1")).workspace))
      assert.deepStrictEqual(yield* remove("w1", { force: true }), { workspace: "w1", deleted: true })
      assert.isFalse(isAlive(handle.pid, handle.pidStartTime))
      assert.deepStrictEqual(yield* remove("w1"), { workspace: "w1", deleted: false })
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("delete removes every row and every file", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "gone" })
      yield* start("gone")
      yield* exec("gone", sh("echo data > tmp/x"))
      yield* remove("gone", { yes: true })
      const sql = yield* SqlClient.SqlClient
      const home = yield* Home
      const rows = yield* sql<{ n: number }>`SELECT
        (SELECT count(*) FROM workspaces WHERE name = 'gone') + (SELECT count(*) FROM events WHERE workspace = 'gone') AS n`
      assert.strictEqual(rows[0]!.n, 0)
      assert.isFalse(NodeFs.existsSync(home.workspaceDir("gone")))
      assert.isFalse(NodeFs.existsSync(home.runtimeDir("gone")))
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("an interrupted start leaves nothing marked running and no VMM alive", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "slow" })
      const hypervisor = yield* Hypervisor
      // A launch that hangs until interrupted, after the VMM exists: the worst moment to be cancelled.
      const launched: Array<number> = []
      const hanging = Effect.provideService(start("slow"), Hypervisor, {
        ...hypervisor,
        launch: (config) =>
          hypervisor.launch(config).pipe(
            Effect.tap((handle) => Effect.sync(() => launched.push(handle.pid))),
            Effect.flatMap((handle) =>
              Effect.never.pipe(
                Effect.onInterrupt(() => Effect.ignore(hypervisor.kill(handle))),
                Effect.as(handle)
              )
            )
          )
      })
      const fiber = yield* Effect.fork(hanging)
      yield* Effect.sleep("200 millis")
      yield* Fiber.interrupt(fiber)
      const { workspace } = yield* inspect("slow")
      assert.strictEqual(workspace.state, "failed")
      assert.isUndefined(workspace.owner)
      assert.strictEqual(launched.length, 1)
      assert.isFalse(isAlive(launched[0]!, undefined))
      const history = yield* Stream.runCollect(events("slow"))
      assert.include([...history].map((e) => e.detail), "start interrupted")
      // And it can be started again.
      assert.strictEqual((yield* start("slow")).state, "running")
      yield* kill("slow")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("a VMM that dies is reported as failed, never as running", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "crash" })
      const running = yield* start("crash")
      const handle = Option.getOrThrow(vmHandleOf(running))
      process.kill(handle.pid, "SIGKILL")
      yield* Effect.sleep("100 millis")
      const { workspace } = yield* inspect("crash")
      assert.strictEqual(workspace.state, "failed")
      assert.strictEqual((yield* wait("crash")).state, "failed")
      assert.strictEqual((yield* start("crash")).state, "running")
      yield* kill("crash")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("start of a running workspace is a conflict; kill of a stopped one too", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "twice" })
      yield* start("twice")
      const again = yield* Effect.flip(start("twice"))
      assert.strictEqual(again._tag, "Conflict")
      assert.strictEqual(again.message, "cannot start workspace twice from state running")
      yield* kill("twice")
      assert.strictEqual((yield* Effect.flip(kill("twice")))._tag, "Conflict")
      const taken = yield* Effect.flip(create({ image: "alpine", name: "twice" }))
      assert.strictEqual(taken._tag, "Conflict")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("exec honours timeouts, output limits, cwd, env and streamed stdin", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "x" })
      yield* start("x")
      const slow = yield* exec("x", new ExecRequest({ argv: ["sleep", "30"], timeoutSeconds: 0.3 }))
      assert.strictEqual(slow.status, "timed_out")
      const big = yield* exec(
        "x",
        new ExecRequest({ argv: ["sh", "-c", "head -c 100000 /dev/zero"], stdoutLimit: 1000 })
      )
      assert.strictEqual(big.stdout.length, 1000)
      assert.isTrue(big.stdoutTruncated)
      const env = yield* exec(
        "x",
        new ExecRequest({ argv: ["sh", "-c", "echo $A-$B"], env: { A: "1", B: "2" } })
      )
      assert.strictEqual(env.stdout, "1-2\n")
      const cwd = yield* exec("x", new ExecRequest({ argv: ["sh", "-c", "basename $PWD"], cwd: "/etc" }))
      assert.strictEqual(cwd.stdout, "etc\n")
      const input = Stream.make(new TextEncoder().encode("one\n"), new TextEncoder().encode("two\n"))
      const counted = yield* exec("x", new ExecRequest({ argv: ["wc", "-l"] }), input)
      assert.strictEqual(counted.stdout.trim(), "2")
      const streamed = yield* Stream.runCollect(execStream("x", sh("echo a; echo b >&2")))
      assert.deepStrictEqual([...streamed].map((o) => o._tag).sort(), ["Exit", "Stderr", "Stdout"])
      yield* kill("x")
    }).pipe(Effect.provide(fakeEnvironment)))
})

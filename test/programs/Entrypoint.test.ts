/**
 * The entrypoint and its result on the fake backend (commands run as host processes in the
 * workspace's scratch root): launch, collection, replacement by the next start, `lost`, `wait`.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Option } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { FileCopy } from "../../src/domain/FileCopy.ts"
import { create } from "../../src/programs/Create.ts"
import { firstProgram, result } from "../../src/programs/Entrypoint.ts"
import { halt, kill } from "../../src/programs/Halt.ts"
import { wait } from "../../src/programs/Observe.ts"
import { start } from "../../src/programs/Start.ts"
import { StateStore } from "../../src/services/StateStore.ts"
import { fakeEnvironment } from "../support/fakeEnvironment.ts"

const failureTag = (exit: Exit.Exit<unknown, { readonly _tag: string }>) =>
  Exit.isFailure(exit) ? Option.getOrThrow(Cause.failureOption(exit.cause))._tag : "success"

describe("entrypoint and result", () => {
  it("looks up a leading plain program only", () => {
    assert.strictEqual(firstProgram("python3 agent.py"), "python3")
    assert.strictEqual(firstProgram("  /usr/bin/env x"), "/usr/bin/env")
    assert.strictEqual(firstProgram("X=1 run"), "")
    assert.strictEqual(firstProgram("(cd /w && make)"), "")
    assert.strictEqual(firstProgram("$TOOL go"), "")
  })

  it.scopedLive("each start runs it; the result has its exit code and output and is replaced by the next", () =>
    Effect.gen(function*() {
      yield* create({
        image: "alpine",
        name: "agent",
        entrypoint: "echo out-$N; echo err >&2; exit 3",
        env: { N: "1" }
      })
      assert.strictEqual(failureTag(yield* Effect.exit(result("agent"))), "NotFound")
      const running = yield* start("agent")
      const first = yield* result("agent", { wait: true, timeoutSeconds: 30 })
      assert.strictEqual(first.status, "exited")
      assert.strictEqual(first.exitCode, 3)
      assert.strictEqual(first.stdout, "out-1\n")
      assert.strictEqual(first.stderr, "err\n")
      assert.strictEqual(first.sessionId, running.sessionId)
      assert.isDefined(first.startedAt)
      assert.isDefined(first.finishedAt)
      // `wait` returns once the entrypoint has ended, with the VM still running.
      const waited = yield* wait("agent")
      assert.strictEqual(waited.state, "running")
      yield* halt("agent")
      // Collected before the halt: the result outlives the VM.
      assert.strictEqual((yield* result("agent")).exitCode, 3)
      const store = yield* StateStore
      yield* store.update("agent", (ws) => ({ ...ws, env: { N: "2" } }) as typeof ws)
      const second = yield* start("agent")
      const next = yield* result("agent", { wait: true, timeoutSeconds: 30 })
      assert.strictEqual(next.sessionId, second.sessionId)
      assert.strictEqual(next.stdout, "out-2\n")
      const events = yield* store.events("agent")
      assert.isTrue(events.some((e) => e.type === "entrypoint" && e.detail === "exited 3"))
      yield* kill("agent")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("files land with their modes before the entrypoint reads them, at every start; bad ones are refused", () =>
    Effect.gen(function*() {
      const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-files-"))
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => NodeFs.rmSync(dir, { recursive: true, force: true }))
      )
      const input = NodePath.join(dir, "input.txt")
      NodeFs.writeFileSync(input, "first\n", { mode: 0o640 })
      const tool = NodePath.join(dir, "tool.sh")
      NodeFs.writeFileSync(tool, "#!/bin/sh\necho tool\n")
      const ws = yield* create({
        image: "alpine",
        name: "files",
        // Relative to the scratch root that stands for the guest's / on the fake backend.
        entrypoint: "cat data/in/input.txt; ls -l data/bin/tool | cut -c1-10",
        files: [
          new FileCopy({ source: input, target: "/data/in/input.txt" }),
          new FileCopy({ source: tool, target: "/data/bin/tool", mode: 0o750 })
        ]
      })
      // The mode of a file given without one is the source's, masked to 0644.
      assert.deepStrictEqual(ws.files.map((f) => f.mode), [0o640, 0o750])
      yield* start("files")
      const first = yield* result("files", { wait: true, timeoutSeconds: 30 })
      assert.strictEqual(first.stdout, "first\n-rwxr-x---\n")
      yield* halt("files")
      // Delivered again at the next start: a changed host file shows.
      NodeFs.writeFileSync(input, "second\n")
      yield* start("files")
      assert.strictEqual(
        (yield* result("files", { wait: true, timeoutSeconds: 30 })).stdout,
        "second\n-rwxr-x---\n"
      )
      yield* kill("files")
      // A source that went away fails the start before anything boots.
      NodeFs.rmSync(input)
      const gone = yield* Effect.exit(start("files"))
      assert.strictEqual(failureTag(gone), "InvalidInput")
      const store = yield* StateStore
      assert.strictEqual((yield* store.get("files")).state, "stopped")

      for (const target of ["relative/path", "/data/bin/tool"]) {
        const refused = yield* Effect.exit(create({
          image: "alpine",
          name: "refused",
          files: [
            new FileCopy({ source: tool, target: "/data/bin/tool" }),
            new FileCopy({ source: tool, target })
          ]
        }))
        assert.strictEqual(failureTag(refused), "InvalidInput")
      }
      assert.isTrue(Option.isNone(yield* store.find("refused")), "nothing created")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("setup runs once before the entrypoint; a failing step fails the start and the next start retries", () =>
    Effect.gen(function*() {
      const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-setup-"))
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => NodeFs.rmSync(dir, { recursive: true, force: true }))
      )
      const log = NodePath.join(dir, "log")
      yield* create({
        image: "alpine",
        name: "setup",
        setup: [`echo step1 >> ${log}`, `test -e ${dir}/allow || { echo not yet; exit 4; }`],
        entrypoint: `echo entry >> ${log}`
      })
      const failed = yield* Effect.exit(start("setup"))
      assert.strictEqual(failureTag(failed), "Permanent")
      assert.include(Exit.isFailure(failed) ? Cause.pretty(failed.cause) : "", "not yet")
      const store = yield* StateStore
      const pending = yield* store.get("setup")
      assert.strictEqual(pending.state, "stopped")
      assert.isUndefined(pending.setupDone)
      assert.strictEqual(NodeFs.readFileSync(log, "utf8"), "step1\n", "no entrypoint after a failed setup")
      NodeFs.writeFileSync(NodePath.join(dir, "allow"), "")
      yield* start("setup")
      yield* result("setup", { wait: true, timeoutSeconds: 30 })
      const done = yield* store.get("setup")
      assert.isDefined(done.setupDone)
      // The fake keeps no disk image: the baseline is the boot configuration alone.
      assert.deepStrictEqual(done.setupBaseline?.recordedAt, done.setupDone)
      assert.isUndefined(done.setupBaseline?.rootfsSha256)
      assert.deepInclude(done.setupBaseline?.boot, { memoryMiB: done.resources.memoryMiB, hostname: "setup" })
      yield* halt("setup")
      yield* start("setup")
      yield* result("setup", { wait: true, timeoutSeconds: 30 })
      assert.strictEqual(NodeFs.readFileSync(log, "utf8"), "step1\nstep1\nentry\nentry\n")
      const details = (yield* store.events("setup")).filter((e) => e.type === "setup").map((e) => e.detail)
      assert.strictEqual(details.length, 4)
      assert.match(details[1]!, /^setup 2\/2 failed \(exited 4\): .*\nnot yet$/)
      yield* kill("setup")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("a program that is not there is a start error; a VM gone before the end is lost", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "missing", entrypoint: "no-such-program-xyz --flag" })
      yield* start("missing")
      const missing = yield* result("missing", { wait: true, timeoutSeconds: 30 })
      assert.strictEqual(missing.status, "start_failed")
      assert.strictEqual(missing.exitCode, 127)
      assert.match(missing.startError ?? "", /no-such-program-xyz: not found/)
      yield* kill("missing")

      yield* create({ image: "alpine", name: "slow", entrypoint: "sleep 5" })
      yield* start("slow")
      assert.strictEqual((yield* result("slow")).status, "running")
      const timedOut = yield* Effect.exit(result("slow", { wait: true, timeoutSeconds: 0.5 }))
      assert.strictEqual(failureTag(timedOut), "Transient")
      yield* kill("slow")
      const lost = yield* result("slow")
      assert.strictEqual(lost.status, "lost")
      assert.match(lost.error ?? "", /stopped before its entrypoint finished/)
    }).pipe(Effect.provide(fakeEnvironment)))
})

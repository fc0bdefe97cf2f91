/**
 * Quarantine on the fake backend: the order of containment, the custody record, and what a
 * quarantined workspace refuses afterwards.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Option } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { ExecRequest } from "../../src/domain/Exec.ts"
import { isAlive } from "../../src/layers/process/Processes.ts"
import { create } from "../../src/programs/Create.ts"
import { remove } from "../../src/programs/Delete.ts"
import { exec } from "../../src/programs/Exec.ts"
import { quarantine } from "../../src/programs/Quarantine.ts"
import { start } from "../../src/programs/Start.ts"
import { StateStore } from "../../src/services/StateStore.ts"
import { fakeEnvironment } from "../support/fakeEnvironment.ts"

const failureTag = (exit: Exit.Exit<unknown, { readonly _tag: string }>) =>
  Exit.isFailure(exit) ? Option.getOrThrow(Cause.failureOption(exit.cause))._tag : "success"

describe("quarantine", () => {
  it.scopedLive("freezes, captures and stops a running workspace into custody; start and exec refuse it", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "suspect" })
      const running = yield* start("suspect")
      const pid = (running.vm as { pid: number }).pid
      const result = yield* quarantine("suspect", { reason: "exfiltration attempt" })
      assert.deepInclude(result, {
        workspace: "suspect",
        state: "quarantined",
        reason: "exfiltration attempt",
        frozen: true,
        severed: true,
        captured: true,
        stopped: true
      })
      assert.deepStrictEqual(result.files, ["console.log", "disk.ext4", "events.jsonl", "vm.state"])
      const manifest = JSON.parse(NodeFs.readFileSync(NodePath.join(result.custody, "manifest.json"), "utf8"))
      assert.deepInclude(manifest, { workspace: "suspect", forensic: true, restorable: false })
      assert.strictEqual(NodeFs.statSync(NodePath.join(result.custody, "manifest.json")).mode & 0o777, 0o600)
      assert.strictEqual(NodeFs.statSync(result.custody).mode & 0o777, 0o700)
      const events = NodeFs.readFileSync(NodePath.join(result.custody, "events.jsonl"), "utf8")
      assert.include(events, "quarantined: exfiltration attempt")
      assert.isFalse(isAlive(pid, undefined), "the VM is stopped")

      const store = yield* StateStore
      const record = yield* store.get("suspect")
      assert.strictEqual(record.state, "quarantined")
      assert.isUndefined(record.vm)
      assert.strictEqual((yield* store.events("suspect")).at(-1)?.type, "custody")

      assert.strictEqual(failureTag(yield* Effect.exit(start("suspect"))), "Conflict")
      assert.strictEqual(
        failureTag(yield* Effect.exit(exec("suspect", new ExecRequest({ argv: ["true"] })))),
        "Conflict"
      )
      // Quarantining it again changes nothing and reports the same custody record.
      const again = yield* quarantine("suspect", { reason: "again" })
      assert.deepInclude(again, { custody: result.custody, reason: "exfiltration attempt", captured: true })
      assert.deepStrictEqual(again.files, result.files)

      const refused = yield* Effect.exit(remove("suspect"))
      assert.strictEqual(failureTag(refused), "Conflict")
      assert.isTrue(NodeFs.existsSync(result.custody), "a plain delete keeps the custody record")
      assert.deepInclude(yield* remove("suspect", { force: true }), { deleted: true })
      assert.isFalse(NodeFs.existsSync(result.custody))
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("--no-capture keeps only the logs; a stopped workspace is refused", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "logs-only" })
      yield* start("logs-only")
      const result = yield* quarantine("logs-only", { capture: false })
      assert.deepInclude(result, { captured: false, stopped: true })
      assert.deepStrictEqual(result.files, ["console.log", "events.jsonl"])
      yield* create({ image: "alpine", name: "idle" })
      assert.strictEqual(failureTag(yield* Effect.exit(quarantine("idle"))), "Conflict")
      yield* remove("logs-only", { force: true })
    }).pipe(Effect.provide(fakeEnvironment)))
})

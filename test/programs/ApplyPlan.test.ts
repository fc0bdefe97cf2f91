/**
 * `apply` and `plan` (`--dry-run`) on the fake backend: an identical spec is a no-op, changes that take
 * effect at the next start are recorded (also on a running workspace), changes that cannot be made in
 * place are refused with each field named and nothing written; a plan checks like `create`, pulls and
 * writes nothing.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Option } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { EgressPolicy } from "../../src/domain/Egress.ts"
import { FileCopy } from "../../src/domain/FileCopy.ts"
import { PublishedPort } from "../../src/domain/Workspace.ts"
import { apply } from "../../src/programs/Apply.ts"
import { create } from "../../src/programs/Create.ts"
import { kill } from "../../src/programs/Halt.ts"
import { plan } from "../../src/programs/Plan.ts"
import { start } from "../../src/programs/Start.ts"
import { StateStore } from "../../src/services/StateStore.ts"
import { fakeEnvironment } from "../support/fakeEnvironment.ts"

const failureOf = <A, E>(exit: Exit.Exit<A, E>) =>
  Exit.isFailure(exit) ? Option.getOrThrow(Cause.failureOption(exit.cause)) : undefined

const recordOf = (name: string) => Effect.flatMap(StateStore, (store) => store.get(name))

describe("apply", () => {
  it.scopedLive("identical fields are a no-op; start-time fields are recorded; others refused, nothing written", () =>
    Effect.gen(function*() {
      const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-apply-"))
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => NodeFs.rmSync(dir, { recursive: true, force: true }))
      )
      const input = NodePath.join(dir, "input.txt")
      NodeFs.writeFileSync(input, "x\n", { mode: 0o640 })
      yield* create({
        image: "alpine:3.20",
        name: "ap",
        entrypoint: "echo one",
        env: { A: "1" },
        setup: ["echo setup"],
        files: [new FileCopy({ source: input, target: "/work/input.txt" })]
      })
      const before = yield* recordOf("ap")

      // Identical: nothing changes, not even the record's timestamp.
      const same = yield* apply("ap", {
        image: "alpine:3.20",
        entrypoint: "echo one",
        env: { A: "1" },
        setup: ["echo setup"],
        files: [new FileCopy({ source: input, target: "/work/input.txt" })]
      })
      assert.deepStrictEqual(same, {
        workspace: "ap",
        state: "prepared",
        changed: false,
        dryRun: false,
        changes: []
      })
      assert.deepStrictEqual((yield* recordOf("ap")).updatedAt, before.updatedAt)

      // A dry run reports and writes nothing.
      const preview = yield* apply("ap", { entrypoint: "echo two" }, { dryRun: true })
      assert.deepStrictEqual(preview.changes, [{
        field: "entrypoint",
        from: "echo one",
        to: "echo two",
        effect: "next start"
      }])
      assert.strictEqual((yield* recordOf("ap")).entrypoint, "echo one")

      // While it runs: what a start reads is recorded for the next start.
      yield* start("ap")
      const applied = yield* apply("ap", {
        entrypoint: "echo two",
        env: { A: "2", B: "3" },
        restart: "on-failure",
        memoryMiB: 1024,
        egress: new EgressPolicy({ mode: "broker", allow: ["api.example.com"], lockAllowlist: true })
      })
      assert.isTrue(applied.changed)
      assert.deepStrictEqual(applied.changes.map((c) => c.field), [
        "resources.memoryMiB",
        "restart",
        "entrypoint",
        "env",
        "egress"
      ])
      const after = yield* recordOf("ap")
      assert.strictEqual(after.state, "running")
      assert.strictEqual(after.entrypoint, "echo two")
      assert.deepStrictEqual(after.env, { A: "2", B: "3" })
      assert.strictEqual(after.restart, "on-failure")
      assert.strictEqual(after.resources.memoryMiB, 1024)
      assert.deepStrictEqual(after.egress?.allow, ["api.example.com"])
      const store = yield* StateStore
      assert.isTrue(
        (yield* store.events("ap")).some((e) => e.type === "apply" && e.detail?.includes("entrypoint"))
      )

      // Refused: the image, the disk size, and (while running) the published ports; none of the rest lands.
      const refused = failureOf(
        yield* Effect.exit(apply("ap", {
          image: "debian:12",
          sizeMiB: 4096,
          ports: [new PublishedPort({ hostIp: "127.0.0.1", hostPort: 8080, guestPort: 80, protocol: "tcp" })],
          entrypoint: "echo three"
        }))
      )
      assert.strictEqual(refused?._tag, "Conflict")
      for (const field of ["image", "resources.sizeMiB", "network.forwards"]) {
        assert.include(refused?.message ?? "", field)
      }
      assert.notInclude(refused?.message ?? "", "entrypoint")
      assert.strictEqual((yield* recordOf("ap")).entrypoint, "echo two")

      // Stopped, the ports may change; a changed setup runs again at the next start.
      yield* kill("ap")
      yield* store.update("ap", (ws) => ({ ...ws, setupDone: ws.createdAt }) as typeof ws)
      const stopped = yield* apply("ap", {
        ports: [new PublishedPort({ hostIp: "127.0.0.1", hostPort: 8080, guestPort: 80, protocol: "tcp" })],
        setup: ["echo setup", "echo more"]
      })
      assert.deepStrictEqual(stopped.changes.map((c) => c.field), ["setup", "network.forwards"])
      const final = yield* recordOf("ap")
      assert.deepStrictEqual(final.ports.map((p) => p.hostPort), [8080])
      assert.isUndefined(final.setupDone)
      assert.strictEqual(failureOf(yield* Effect.exit(apply("nope", {})))?._tag, "NotFound")
    }).pipe(Effect.provide(fakeEnvironment)))
})

describe("plan", () => {
  it.scopedLive("checks like create, reports what would run, and creates nothing", () =>
    Effect.gen(function*() {
      const planned = yield* plan({
        kind: "run",
        image: "alpine:3.20",
        name: "dry",
        command: ["echo", "hi"],
        setup: ["echo prepare"],
        memoryMiB: 1024,
        ports: [new PublishedPort({ hostIp: "127.0.0.1", hostPort: 8080, guestPort: 80, protocol: "tcp" })]
      })
      assert.strictEqual(planned.kind, "run")
      assert.strictEqual(planned.backend, "fake")
      // The fake store holds no images: not pulled, and nothing was pulled for the plan.
      assert.deepStrictEqual({ ...planned.image }, { ref: "alpine:3.20", pulled: false })
      assert.deepStrictEqual({ ...planned.resources }, { memoryMiB: 1024, cpus: 2, diskFrom: "unknown" })
      assert.deepStrictEqual(planned.command, ["echo", "hi"])
      assert.deepStrictEqual(planned.setup, ["echo prepare"])
      assert.strictEqual(planned.network.egress.mode, "broker")
      assert.include(planned.kernelNote ?? "", "boots no kernel")
      const store = yield* StateStore
      assert.isTrue(Option.isNone(yield* store.find("dry")))

      // Bad input fails as create would; a name in use is a conflict.
      const badName = failureOf(yield* Effect.exit(plan({ kind: "create", image: "alpine", name: "a/b" })))
      assert.strictEqual(badName?._tag, "InvalidInput")
      yield* create({ image: "alpine", name: "taken" })
      const taken = failureOf(yield* Effect.exit(plan({ kind: "create", image: "alpine", name: "taken" })))
      assert.strictEqual(taken?._tag, "Conflict")
    }).pipe(Effect.provide(fakeEnvironment)))
})

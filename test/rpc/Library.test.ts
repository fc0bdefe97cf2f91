/**
 * The examples of docs/library.md, run: a host application composes the layers itself and drives
 * workspaces through the programs, with the fake backend swapped in for its tests; and the same
 * procedures through a `MicroagentClient` that calls the handlers in-process.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Layer, Schedule, Stream } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { ExecRequest } from "../../src/domain/Exec.ts"
import * as Microagent from "../../src/Microagent.ts"
import { create } from "../../src/programs/Create.ts"
import { remove } from "../../src/programs/Delete.ts"
import { exec } from "../../src/programs/Exec.ts"
import { run } from "../../src/programs/Run.ts"
import { serviceDir } from "../../src/programs/Service.ts"
import { start } from "../../src/programs/Start.ts"
import { MicroagentClient } from "../../src/rpc/Client.ts"
import { layerInProcessClient } from "../../src/rpc/Server.ts"
import { Home } from "../../src/services/Home.ts"
import { Hypervisor } from "../../src/services/Hypervisor.ts"

/**
 * A running workspace that is deleted (its VM killed first) when the scope closes, however it closes.
 * Only the creation is the acquisition: booting stays interruptible, and a failed boot is deleted too.
 */
const workspace = (image: string, name: string) =>
  Effect.acquireRelease(
    create({ image, name }),
    (ws) => remove(ws.name, { force: true }).pipe(Effect.ignore)
  ).pipe(Effect.tap((ws) => start(ws.name)))

const task = Effect.scoped(Effect.gen(function*() {
  const ws = yield* workspace("alpine:3.20", "agent-1")
  const result = yield* exec(ws.name, new ExecRequest({ argv: ["sh", "-c", "echo hello from $0"] }))
  return result.stdout
}))

// --- the tests ---

/** A fresh state directory for one test, and no fake VMM left behind. */
const tempRoot = Effect.acquireRelease(
  Effect.sync(() => NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-lib-"))),
  (root) => Effect.sync(() => NodeFs.rmSync(root, { recursive: true, force: true }))
)

/** A live process (a zombie, gone but not yet reaped, counts as ended). */
const running = (pid: number) => {
  try {
    return !NodeFs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.startsWith("Z")
  } catch {
    return false
  }
}

describe("the library, as docs/library.md shows it", () => {
  it.scopedLive("a host application drives a workspace through the programs, on the fake backend", () =>
    Effect.gen(function*() {
      const root = yield* tempRoot
      const stdout = yield* task.pipe(Effect.provide(Microagent.layerTest({ home: root })))
      assert.strictEqual(stdout, "hello from sh\n")
      const oneShot = yield* run({ image: "alpine:3.20", command: ["echo", "once"] }).pipe(
        Effect.provide(Microagent.layerTest({ home: root }))
      )
      assert.strictEqual(oneShot.result.stdout, "once\n")
      assert.deepStrictEqual(NodeFs.readdirSync(NodePath.join(root, "workspaces")), [])
    }))

  it.scopedLive("the test layer removes its temporary state directory and ends its fake VMMs", () =>
    Effect.gen(function*() {
      const seen = yield* Effect.scoped(Effect.gen(function*() {
        const context = yield* Layer.build(Microagent.layerTest())
        const started = yield* create({ image: "alpine", name: "lib-t", service: "sleep 600" }).pipe(
          Effect.flatMap((w) => start(w.name)),
          Effect.provide(context)
        )
        const home = Context.get(context, Home)
        assert.isTrue(NodeFs.existsSync(home.root))
        // What the fake guest left running: its service's supervisor, never halted or killed here.
        const supervisorFile = NodePath.join(started.rootfsPath, serviceDir, "supervisor")
        const supervisor = yield* Effect.sync(() => Number(NodeFs.readFileSync(supervisorFile, "utf8"))).pipe(
          Effect.retry({ schedule: Schedule.spaced("100 millis"), times: 50 })
        )
        assert.isTrue(running(supervisor), "the service's supervisor runs")
        return { root: home.root, pid: (started.vm as { readonly pid: number }).pid, supervisor }
      }))
      assert.isFalse(NodeFs.existsSync(seen.root))
      assert.isFalse(running(seen.supervisor), "the fake guest's service supervisor ended with the layer")
      // The fake VMM (a detached `sleep`) is gone: no process, or a zombie with an empty command line.
      const cmdline = NodeFs.existsSync(`/proc/${seen.pid}/cmdline`)
        ? NodeFs.readFileSync(`/proc/${seen.pid}/cmdline`, "utf8")
        : ""
      assert.notInclude(cmdline, "sleep")
    }))

  it.scopedLive("a long-lived host builds each backend once and runs each workspace on its own", () =>
    Effect.gen(function*() {
      const root = yield* tempRoot
      const Runtime = Microagent.layerBackends({ home: root, backend: "fake" })
      const program = Effect.gen(function*() {
        yield* Microagent.withBackend(undefined, create({ image: "alpine", name: "lib-1" }))
        yield* Microagent.withWorkspaceBackend("lib-1", start("lib-1"))
        return yield* Microagent.withWorkspaceBackend(
          "lib-1",
          exec("lib-1", new ExecRequest({ argv: ["echo", "ok"] }))
        )
      }).pipe(Effect.provide(Runtime))
      const result = yield* program
      assert.strictEqual(result.stdout, "ok\n")
      const backend = yield* Effect.provide(
        Microagent.withWorkspaceBackend(
          "lib-1",
          Effect.flatMap(Hypervisor, (h) => Effect.succeed(h.backend))
        ),
        Runtime
      )
      assert.strictEqual(backend, "fake")
      yield* Effect.provide(
        Microagent.withWorkspaceBackend("lib-1", remove("lib-1", { force: true })),
        Runtime
      )
    }))

  it.scopedLive("the RPC procedures in-process: the same MicroagentClient, no socket", () =>
    Effect.gen(function*() {
      const root = yield* tempRoot
      const InProcess = layerInProcessClient.pipe(
        Layer.provideMerge(Microagent.layerTest({ home: root }))
      )
      const chunks = yield* Effect.gen(function*() {
        const client = yield* MicroagentClient
        yield* client.create({ image: "alpine", name: "lib-2" })
        yield* client.start({ name: "lib-2" })
        const output = yield* client.execStream({ name: "lib-2", argv: ["sh", "-c", "echo a; echo b"] }).pipe(
          Stream.runCollect
        )
        yield* client.delete({ name: "lib-2", force: true })
        return [...output].map((o) => o._tag)
      }).pipe(Effect.provide(InProcess))
      assert.strictEqual(chunks.at(-1), "Exit")
      assert.include(chunks, "Stdout")
    }))
})

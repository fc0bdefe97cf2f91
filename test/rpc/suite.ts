/**
 * The RPC API's tests from another process: `serve rpc` runs as a child process and the test process
 * talks to it with the library's client layer, as a host application would. The target (backend,
 * image, state setup) is a parameter: the fast tier runs them on the fake backend, the real-VM tier on
 * QEMU.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Chunk, Effect, Exit, Option, Schedule, Stream } from "effect"
import { spawnSync } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { MicroagentClient } from "../../src/rpc/Client.ts"
import type { ExecOutput } from "../../src/rpc/Rpcs.ts"
import type { TestTarget } from "../mcp/mcpClient.ts"
import { binPath, makeStateDir, type ServerProcess, startServer, stopServer } from "./serverProcess.ts"

export const describeRpcServer = (target: TestTarget) => {
  const { backend, image } = target
  let server: ServerProcess

  beforeAll(async () => {
    server = await startServer(target, await makeStateDir(target))
  }, 120_000)

  afterAll(async () => {
    const code = await stopServer(server)
    // A clean stop removes the socket.
    assert.isFalse(NodeFs.existsSync(server.socket), `socket left behind; exit ${code}`)
  })

  /** Runs a test with a client connected for its whole duration. */
  const withClient = <A, E>(effect: Effect.Effect<A, E, MicroagentClient>) =>
    Effect.provide(effect, MicroagentClient.layer({ socket: server.socket }))

  const text = (outputs: Iterable<ExecOutput>, tag: "Stdout" | "Stderr") =>
    Buffer.concat([...outputs].flatMap((o) => (o._tag === tag ? [Buffer.from(o.data)] : []))).toString("utf8")

  const isGone = (pid: number) => {
    try {
      process.kill(pid, 0)
      return false
    } catch {
      return true
    }
  }

  describe(`serve rpc (${backend} backend)`, () => {
    it.scopedLive("serves on a private socket: 0600 in a 0700 directory", () =>
      Effect.sync(() => {
        assert.strictEqual(NodeFs.statSync(server.socket).mode & 0o777, 0o600)
        assert.strictEqual(NodeFs.statSync(NodePath.dirname(server.socket)).mode & 0o777, 0o700)
      }))

    it("refuses a socket another server listens on, and replaces a stale one", async () => {
      const second = spawnSync(process.execPath, [binPath, "serve", "rpc", "--socket", server.socket], {
        env: { ...process.env, MICROAGENT_HOME: server.stateDir, MICROAGENT_OUTPUT: "json" },
        encoding: "utf8",
        timeout: 20_000
      })
      assert.strictEqual(second.status, 1)
      assert.strictEqual(JSON.parse(second.stderr.trim().split("\n").at(-1)!).error.kind, "conflict")
      // A server killed outright leaves its socket file behind; the next one takes the path over.
      const stale = NodePath.join(server.stateDir, "stale", "api.sock")
      NodeFs.mkdirSync(NodePath.dirname(stale), { recursive: true, mode: 0o700 })
      const holder = spawnSync(process.execPath, [
        "-e",
        `require("net").createServer().listen(${
          JSON.stringify(stale)
        }, () => process.kill(process.pid, "SIGKILL"))`
      ])
      assert.strictEqual(holder.signal, "SIGKILL")
      assert.isTrue(NodeFs.statSync(stale).isSocket())
      const next = await startServer(target, server.stateDir, stale)
      await stopServer(next, true)
      assert.isFalse(NodeFs.existsSync(stale))
    })

    it("leaves the mode of a directory it did not make alone (a socket in /tmp must not lock /tmp)", async () => {
      const shared = NodePath.join(server.stateDir, "shared")
      NodeFs.mkdirSync(shared)
      NodeFs.chmodSync(shared, 0o1777)
      const socket = NodePath.join(shared, "api.sock")
      const next = await startServer(target, server.stateDir, socket)
      assert.strictEqual(NodeFs.statSync(shared).mode & 0o7777, 0o1777)
      assert.strictEqual(NodeFs.statSync(socket).mode & 0o777, 0o600)
      await stopServer(next, true)
    })

    it.scopedLive("create, start, exec, inspect, list, events, logs, halt, delete", () =>
      withClient(Effect.gen(function*() {
        const client = yield* MicroagentClient
        const { version } = yield* client.version()
        assert.match(version, /^\d+\.\d+\.\d+/)
        const created = yield* client.create({ image, name: "r1", env: { WHO: "rpc" } })
        assert.strictEqual(created.name, "r1")
        assert.strictEqual(created.state, "prepared")
        assert.strictEqual(created.backend, backend)
        const started = yield* client.start({ name: "r1" })
        assert.strictEqual(started.state, "running")
        const result = yield* client.exec({
          name: "r1",
          argv: ["sh", "-c", 'read line; echo "$line $WHO"; echo oops >&2; exit 3'],
          stdin: new TextEncoder().encode("hello\n")
        })
        assert.strictEqual(result.status, "exited")
        assert.strictEqual(result.exitCode, 3)
        assert.strictEqual(result.stdout, "hello rpc\n")
        assert.strictEqual(result.stderr, "oops\n")
        const report = yield* client.inspect({ name: "r1" })
        assert.strictEqual(report.workspace.state, "running")
        const all = yield* client.list({})
        assert.deepStrictEqual(all.map((ws) => ws.name), ["r1"])
        const running = yield* client.list({ runningOnly: true })
        assert.strictEqual(running.length, 1)
        const events = yield* Stream.runCollect(client.events({ name: "r1" }))
        assert.includeMembers(Chunk.toArray(events).map((e) => e.type), ["created", "exec"])
        const logs = yield* Stream.runCollect(client.logs({ name: "r1" }))
        assert.isAbove(Chunk.reduce(logs, 0, (n, chunk) => n + chunk.length), 0)
        const halted = yield* client.halt({ name: "r1", reason: "test" })
        assert.strictEqual(halted.state, "halted")
        const waited = yield* client.wait({ name: "r1", timeoutSeconds: 5 })
        assert.strictEqual(waited.state, "halted")
        assert.deepStrictEqual(yield* client.delete({ name: "r1" }), { workspace: "r1", deleted: true })
        assert.deepStrictEqual(yield* client.delete({ name: "r1" }), { workspace: "r1", deleted: false })
      })))

    it.scopedLive("checks and backs up the state database; a backup never overwrites a file", () =>
      withClient(Effect.gen(function*() {
        const client = yield* MicroagentClient
        const to = NodePath.join(server.stateDir, "copy.db")
        const backup = yield* client.stateBackup({ to })
        assert.strictEqual(backup.path, to)
        assert.strictEqual(NodeFs.statSync(to).mode & 0o777, 0o600)
        const again = yield* Effect.flip(client.stateBackup({ to }))
        assert.strictEqual(again._tag, "Permanent")
        const rotated = yield* client.stateBackup({})
        const check = yield* client.stateCheck()
        assert.isTrue(check.ok, check.problems.join("; "))
        assert.strictEqual(check.database, NodePath.join(server.stateDir, "state.db"))
        assert.include(check.backups.map((b) => b.path), rotated.path)
      })))

    it.scopedLive("carries classified errors", () =>
      withClient(Effect.gen(function*() {
        const client = yield* MicroagentClient
        const missing = yield* Effect.flip(client.inspect({ name: "nope" }))
        assert.strictEqual(missing._tag, "NotFound")
        assert.strictEqual((missing as { kind?: string }).kind, "not_found")
        yield* client.create({ image, name: "r2" })
        const notRunning = yield* Effect.flip(client.exec({ name: "r2", argv: ["true"] }))
        assert.strictEqual(notRunning._tag, "Conflict")
        assert.include((notRunning as { remediation: string }).remediation, "start")
        const badName = yield* Effect.flip(client.create({ image, name: "../evil" }))
        assert.strictEqual(badName._tag, "InvalidInput")
        yield* client.delete({ name: "r2" })
      })))

    it.scopedLive("streams exec output as it comes", () =>
      withClient(Effect.gen(function*() {
        const client = yield* MicroagentClient
        yield* client.create({ image, name: "r3" })
        yield* client.start({ name: "r3" })
        // The command prints, then waits for the test to open a gate (with a second exec): "two" can only
        // come after the test has seen "one", so the stream cannot have been buffered to the end.
        const outputs: Array<ExecOutput> = []
        yield* client.execStream({
          name: "r3",
          argv: ["sh", "-c", "echo one; while [ ! -e tmp/go ]; do sleep 0.05; done; echo two; echo err >&2"],
          cwd: "/"
        }).pipe(Stream.runForEach((output) =>
          Effect.gen(function*() {
            outputs.push(output)
            if (output._tag === "Stdout" && Buffer.from(output.data).toString().includes("one")) {
              yield* client.exec({ name: "r3", argv: ["sh", "-c", "touch tmp/go"], cwd: "/" })
            }
          })
        ))
        assert.strictEqual(text(outputs, "Stdout"), "one\ntwo\n")
        assert.strictEqual(text(outputs, "Stderr"), "err\n")
        const last = outputs.at(-1)
        assert.strictEqual(last?._tag, "Exit")
        if (last?._tag === "Exit") assert.strictEqual(last.result.exitCode, 0)
        yield* client.delete({ name: "r3", force: true })
      })))

    it.scopedLive("interrupting a streamed exec stops the guest command", () =>
      withClient(Effect.gen(function*() {
        const client = yield* MicroagentClient
        const ws = yield* client.create({ image, name: "r4" })
        yield* client.start({ name: "r4" })
        const first = yield* client.execStream({
          name: "r4",
          argv: ["sh", "-c", "echo $$ > tmp/pid; echo started; sleep 100"],
          cwd: "/"
        }).pipe(Stream.take(1), Stream.runCollect)
        assert.strictEqual(Chunk.unsafeHead(first)._tag, "Stdout")
        // Asked inside the guest: is the shell gone?
        const probe = client.exec({
          name: "r4",
          argv: ["sh", "-c", "kill -0 $(cat tmp/pid) 2>/dev/null"],
          cwd: "/"
        })
        const goneInGuest = yield* probe.pipe(
          Effect.filterOrFail((result) => result.exitCode !== 0),
          Effect.retry({ schedule: Schedule.spaced("100 millis"), times: 100 }),
          Effect.option
        )
        assert.isTrue(Option.isSome(goneInGuest), "the guest command is still running")
        if (backend === "fake") {
          // The fake backend runs guest commands as host processes: the shell's pid is a host pid.
          const pid = Number(NodeFs.readFileSync(NodePath.join(ws.rootfsPath, "tmp", "pid"), "utf8").trim())
          assert.isAbove(pid, 1)
          assert.isTrue(isGone(pid), `guest process ${pid} is still alive on the host`)
        }
        // The workspace is still usable afterwards.
        const after = yield* client.exec({ name: "r4", argv: ["echo", "still here"] })
        assert.strictEqual(after.stdout, "still here\n")
        yield* client.delete({ name: "r4", force: true })
      })))

    it.scopedLive("a one-shot run leaves nothing behind", () =>
      withClient(Effect.gen(function*() {
        const client = yield* MicroagentClient
        const outcome = yield* client.run({ image, command: ["sh", "-c", "echo ran; exit 4"] })
        assert.strictEqual(outcome.result.exitCode, 4)
        assert.strictEqual(outcome.result.stdout, "ran\n")
        assert.isFalse(outcome.kept)
        const all = yield* client.list({})
        assert.notInclude(all.map((ws) => ws.name), outcome.workspace)
        const exit = yield* Effect.exit(client.inspect({ name: outcome.workspace }))
        assert.isTrue(Exit.isFailure(exit))
      })))
  })
}

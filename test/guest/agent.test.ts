/**
 * The real agent (host test mode, unix socket) under the real host-side client.
 */
import { assert, describe, it } from "@effect/vitest"
import { Chunk, Deferred, Effect, Either, Exit, Fiber, Option, type Scope, Stream } from "effect"
import { randomBytes } from "node:crypto"
import { readFileSync, statSync, writeFileSync } from "node:fs"
import { hostname } from "node:os"
import { join } from "node:path"
import { beforeAll } from "vitest"
import { ExecRequest } from "../../src/domain/Exec.ts"
import { AgentChannel } from "../../src/layers/guest/AgentChannel.ts"
import { encodeHeader, FieldWriter, MessageType } from "../../src/layers/guest/internal/wire.ts"
import { GuestChannel } from "../../src/services/GuestChannel.ts"
import { buildAgent, connectedAgent, exists, guestDir, makeTempDir, RawClient, startAgent } from "./agent.ts"

beforeAll(() => buildAgent(), 120_000)

const req = (
  argv: ReadonlyArray<string>,
  extra: Partial<ConstructorParameters<typeof ExecRequest>[0]> = {}
) => new ExecRequest({ argv: argv as [string, ...Array<string>], ...extra })

const bytesOf = (chunks: Chunk.Chunk<Uint8Array>) => Buffer.concat(Chunk.toArray(chunks))

const pidAlive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

// Real time throughout: these tests wait on real processes (TestClock would freeze retries).
const live = <A, E>(name: string, body: () => Effect.Effect<A, E, GuestChannel | Scope.Scope>) =>
  it.scopedLive(name, () => body().pipe(Effect.provide(AgentChannel.layer)))

describe("guest agent over a unix socket", () => {
  live("handshakes and answers ping", () =>
    Effect.gen(function*() {
      const { conn } = yield* connectedAgent
      assert.strictEqual(conn.agent?.version, 1)
      assert.include(conn.agent?.software ?? "", "microagent-agent/")
      assert.includeMembers([...(conn.agent?.capabilities ?? [])], ["exec", "files", "secrets", "pty"])
      yield* conn.ping
    }))

  live("reports exit codes, output, env and cwd", () =>
    Effect.gen(function*() {
      const { conn } = yield* connectedAgent
      const r = yield* conn.exec(
        req(["sh", "-c", 'echo "$FOO"; pwd; echo oops >&2; exit 3'], { env: { FOO: "bar baz" }, cwd: "/tmp" })
      )
      assert.strictEqual(r.status, "exited")
      assert.strictEqual(r.exitCode, 3)
      assert.strictEqual(r.stdout, "bar baz\n/tmp\n")
      assert.strictEqual(r.stderr, "oops\n")
      assert.isFalse(r.stdoutTruncated)
      const ok = yield* conn.exec(req(["true"]))
      assert.strictEqual(ok.exitCode, 0)
      assert.strictEqual(ok.status, "exited")
    }))

  live("reports signals, timeouts and start failures", () =>
    Effect.gen(function*() {
      const { conn } = yield* connectedAgent
      const killed = yield* conn.exec(req(["sh", "-c", "kill -9 $$"]))
      assert.strictEqual(killed.status, "signaled")
      assert.strictEqual(killed.signal, 9)
      assert.strictEqual(killed.exitCode, 137)

      const started = Date.now()
      const slow = yield* conn.exec(req(["sleep", "30"], { timeoutSeconds: 0.3 }))
      assert.strictEqual(slow.status, "timed_out")
      assert.strictEqual(slow.exitCode, 124)
      assert.isBelow(Date.now() - started, 5000)

      // TERM is ignored: the agent must follow with KILL after the grace period
      const stubborn = yield* conn.exec(req(["sh", "-c", "trap '' TERM; sleep 30"], { timeoutSeconds: 0.2 }))
      assert.strictEqual(stubborn.status, "timed_out")
      assert.strictEqual(stubborn.signal, 9)

      const missing = yield* conn.exec(req(["/nonexistent/program"]))
      assert.strictEqual(missing.status, "failed_to_start")
      assert.strictEqual(missing.exitCode, 127)
      assert.include(missing.error ?? "", "No such file or directory")

      const badDir = yield* conn.exec(req(["true"], { cwd: "/nonexistent-dir" }))
      assert.strictEqual(badDir.status, "failed_to_start")
      assert.include(badDir.error ?? "", "chdir")

      const huge = yield* Effect.either(conn.exec(req(["echo", "x".repeat(2 * 1024 * 1024)])))
      assert.isTrue(
        Either.isLeft(huge) && huge.left._tag === "GuestRemoteError" && huge.left.code === "invalid_argument"
      )

      const badUser = yield* conn.exec(req(["true"], { user: "no-such-user-here" }))
      assert.strictEqual(badUser.status, "failed_to_start")
      assert.include(badUser.error ?? "", "unknown user")
    }))

  live("runs as the requested user", () =>
    Effect.gen(function*() {
      const { conn } = yield* connectedAgent
      if (process.getuid?.() !== 0) {
        // without root the agent cannot switch users, and must say so
        const denied = yield* conn.exec(req(["id", "-u"], { user: "nobody" }))
        assert.strictEqual(denied.status, "failed_to_start")
        assert.include(denied.error ?? "", "Operation not permitted")
        return
      }
      const byName = yield* conn.exec(req(["sh", "-c", "id -u; id -g; echo $HOME"], { user: "nobody" }))
      assert.strictEqual(byName.stdout.split("\n")[0], "65534")
      const byId = yield* conn.exec(req(["id", "-u"], { user: "1234:4321" }))
      assert.strictEqual(byId.stdout, "1234\n")
      const gid = yield* conn.exec(req(["id", "-g"], { user: "1234:4321" }))
      assert.strictEqual(gid.stdout, "4321\n")
    }))

  live("carries 10 MiB of output and caps it when asked", () =>
    Effect.gen(function*() {
      const { conn } = yield* connectedAgent
      const size = 10 * 1024 * 1024
      const big = yield* conn.exec(req(["head", "-c", String(size), "/dev/zero"]))
      assert.strictEqual(big.stdout.length, size)
      assert.isFalse(big.stdoutTruncated)
      const capped = yield* conn.exec(
        req(["sh", "-c", `head -c ${size} /dev/zero; head -c 5000 /dev/zero >&2`], {
          stdoutLimit: 1000,
          stderrLimit: 10
        })
      )
      assert.strictEqual(capped.exitCode, 0)
      assert.strictEqual(capped.stdout.length, 1000)
      assert.isTrue(capped.stdoutTruncated)
      assert.strictEqual(capped.stderr.length, 10)
      assert.isTrue(capped.stderrTruncated)
    }))

  live("passes binary data through stdin and stdout unchanged", () =>
    Effect.gen(function*() {
      const { conn } = yield* connectedAgent
      const data = new Uint8Array(3 * 1024 * 1024 + 17)
      for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 8)) & 0xff
      const chunks = [] as Array<Uint8Array>
      for (let off = 0; off < data.length; off += 100_000) chunks.push(data.subarray(off, off + 100_000))
      const out = yield* conn.execStream(req(["cat"]), Stream.fromIterable(chunks)).pipe(Stream.runCollect)
      const stdout = bytesOf(
        Chunk.filterMap(out, (o) => (o._tag === "Stdout" ? Option.some(o.data) : Option.none()))
      )
      const last = Chunk.last(out)
      assert.isTrue(last._tag === "Some" && last.value._tag === "Exit" && last.value.result.exitCode === 0)
      assert.strictEqual(stdout.length, data.length)
      assert.isTrue(Buffer.from(data).equals(stdout))
    }))

  live("streams stdin as it comes", () =>
    Effect.gen(function*() {
      const { conn } = yield* connectedAgent
      const lines = Stream.range(1, 200).pipe(Stream.map((i) => new TextEncoder().encode(`line ${i}\n`)))
      const r = yield* conn.exec(req(["wc", "-l"]), lines)
      assert.strictEqual(r.stdout.trim(), "200")
      // a process that never reads stdin must not block the host's stdin stream forever
      const ignored = yield* conn.exec(
        req(["true"]),
        Stream.repeatValue(new Uint8Array(65536)).pipe(Stream.take(100))
      )
      assert.strictEqual(ignored.exitCode, 0)
    }))

  live("multiplexes 32 concurrent execs on one connection", () =>
    Effect.gen(function*() {
      const { conn } = yield* connectedAgent
      const started = Date.now()
      const results = yield* Effect.all(
        Array.from({ length: 32 }, (_, i) =>
          conn.exec(req(["sh", "-c", `sleep 0.5; echo out-${i}; echo err-${i} >&2; exit ${i % 7}`]))),
        { concurrency: "unbounded" }
      )
      results.forEach((r, i) => {
        assert.strictEqual(r.stdout, `out-${i}\n`)
        assert.strictEqual(r.stderr, `err-${i}\n`)
        assert.strictEqual(r.exitCode, i % 7)
      })
      // in parallel, not one after another (32 × 0.5 s)
      assert.isBelow(Date.now() - started, 8000)
    }))

  live("interrupting an exec stream stops the guest process group", () =>
    Effect.gen(function*() {
      const { agent, conn } = yield* connectedAgent
      const first = yield* conn.execStream(req(["sh", "-c", "echo $$; sleep 30 & wait"])).pipe(
        Stream.take(1),
        Stream.runCollect
      )
      const head = Chunk.unsafeHead(first)
      assert.strictEqual(head._tag, "Stdout")
      const pid = Number(
        new TextDecoder().decode(head._tag === "Stdout" ? head.data : new Uint8Array()).trim()
      )
      assert.isTrue(pid > 0)
      for (let i = 0; i < 100 && pidAlive(pid); i++) yield* Effect.sleep("50 millis")
      assert.isFalse(pidAlive(pid))

      // interrupting a running `exec` does the same
      const pidFile = join(agent.dir, "pid")
      const fiber = yield* conn.exec(req(["sh", "-c", `echo $$ > ${pidFile}; exec sleep 30`])).pipe(
        Effect.fork
      )
      for (let i = 0; i < 100 && !exists(pidFile); i++) yield* Effect.sleep("20 millis")
      yield* Effect.sleep("50 millis")
      const exit = yield* Fiber.interrupt(fiber)
      assert.isTrue(Exit.isInterrupted(exit))
      const pid2 = Number(readFileSync(pidFile, "utf8").trim())
      for (let i = 0; i < 100 && pidAlive(pid2); i++) yield* Effect.sleep("50 millis")
      assert.isFalse(pidAlive(pid2))
    }))

  live("runs commands on a pseudo-terminal and resizes it", () =>
    Effect.gen(function*() {
      const { conn } = yield* connectedAgent
      const r = yield* conn.exec(
        req(["sh", "-c", "stty size; tty; echo $TERM"], { tty: { rows: 30, cols: 100 } })
      )
      assert.strictEqual(r.exitCode, 0)
      const lines = r.stdout.split(/\r?\n/)
      assert.strictEqual(lines[0], "30 100")
      assert.match(lines[1]!, /^\/dev\/pts\/\d+$/)
      assert.strictEqual(lines[2], "xterm-256color")
      // stdin through the terminal, EOF as Ctrl-D
      const echo = yield* conn.exec(
        req(["sh", "-c", "stty -echo; read x; echo got:$x"], { tty: { rows: 24, cols: 80 } }),
        Stream.make(new TextEncoder().encode("hello\n"))
      )
      assert.include(echo.stdout, "got:hello")
    }))

  live("delivers signals and terminal resizes to a running exec", () =>
    Effect.gen(function*() {
      const { conn } = yield* connectedAgent
      const script = "trap 'echo got-usr1; exit 7' USR1; echo ready; while :; do sleep 0.05; done"
      const ready = yield* Deferred.make<void>()
      const controls = Stream.fromEffect(Deferred.await(ready)).pipe(
        Stream.as({ _tag: "Signal", signal: 10 } as const)
      )
      const out = yield* conn.execStream(req(["sh", "-c", script]), undefined, controls).pipe(
        Stream.tap((o) => (o._tag === "Stdout" ? Deferred.succeed(ready, undefined) : Effect.void)),
        Stream.runCollect
      )
      const text = new TextDecoder().decode(
        bytesOf(Chunk.filterMap(out, (o) => (o._tag === "Stdout" ? Option.some(o.data) : Option.none())))
      )
      assert.strictEqual(text, "ready\ngot-usr1\n")
      const last = Chunk.unsafeLast(out)
      assert.isTrue(last._tag === "Exit" && last.result.exitCode === 7)

      // resize: the shell sees the new size after SIGWINCH
      const resized = yield* Deferred.make<void>()
      const sized = yield* conn.execStream(
        req(["sh", "-c", "trap 'stty size; exit 0' WINCH; echo ready; while :; do sleep 0.05; done"], {
          tty: { rows: 24, cols: 80 }
        }),
        undefined,
        Stream.fromEffect(Deferred.await(resized)).pipe(
          Stream.as({ _tag: "Resize", rows: 50, cols: 132 } as const)
        )
      ).pipe(
        Stream.tap((o) => (o._tag === "Stdout" ? Deferred.succeed(resized, undefined) : Effect.void)),
        Stream.runCollect
      )
      const tty = new TextDecoder().decode(
        bytesOf(Chunk.filterMap(sized, (o) => (o._tag === "Stdout" ? Option.some(o.data) : Option.none())))
      )
      assert.include(tty, "50 132")
    }))

  live("round-trips files with modes and owners", () =>
    Effect.gen(function*() {
      const { agent, conn } = yield* connectedAgent
      const path = join(agent.dir, "upload.bin")
      const data = new Uint8Array(2 * 1024 * 1024 + 3).map((_, i) => (i * 31) & 0xff)
      // changing owners needs root (CI runs as root); otherwise the file keeps ours
      const root = process.getuid?.() === 0
      yield* conn.putFile({
        path,
        mode: 0o640,
        ...(root ? { uid: 1000, gid: 1001 } : {}),
        data: Stream.make(data.subarray(0, 1000), data.subarray(1000))
      })
      const st = statSync(path)
      assert.strictEqual(st.mode & 0o7777, 0o640)
      assert.strictEqual(st.uid, root ? 1000 : process.getuid?.())
      assert.strictEqual(st.gid, root ? 1001 : process.getgid?.())
      assert.isTrue(Buffer.from(data).equals(readFileSync(path)))

      const got = yield* conn.getFile(path)
      assert.strictEqual(got.mode, 0o640)
      assert.strictEqual(got.size, data.length)
      const back = bytesOf(yield* Stream.runCollect(got.data))
      assert.isTrue(Buffer.from(data).equals(back))

      writeFileSync(join(agent.dir, "empty"), "")
      const empty = yield* conn.getFile(join(agent.dir, "empty"))
      assert.strictEqual(bytesOf(yield* Stream.runCollect(empty.data)).length, 0)

      const exe = join(agent.dir, "run.sh")
      yield* conn.putFile({
        path: exe,
        mode: 0o755,
        data: Stream.make(new TextEncoder().encode("#!/bin/sh\necho ran\n"))
      })
      assert.strictEqual((yield* conn.exec(req([exe]))).stdout, "ran\n")

      const missing = yield* Effect.either(conn.getFile(join(agent.dir, "nope")))
      assert.isTrue(
        Either.isLeft(missing) && missing.left._tag === "GuestRemoteError"
          && missing.left.code === "not_found"
      )
      const dir = yield* Effect.either(conn.getFile(agent.dir))
      assert.isTrue(Either.isLeft(dir) && dir.left._tag === "GuestRemoteError")
      const noParent = yield* Effect.either(
        conn.putFile({ path: join(agent.dir, "no/such/dir/x"), mode: 0o600, data: Stream.empty })
      )
      assert.isTrue(Either.isLeft(noParent) && noParent.left._tag === "GuestRemoteError")
    }))

  live("delivers secrets as 0400 files", () =>
    Effect.gen(function*() {
      const { agent, conn } = yield* connectedAgent
      const token = new TextEncoder().encode("s3cr3t\u0000bytes")
      yield* conn.deliverSecrets([{ name: "API_TOKEN", value: token }, {
        name: "EMPTY",
        value: new Uint8Array()
      }])
      const file = join(agent.secretsDir, "API_TOKEN")
      assert.strictEqual(statSync(file).mode & 0o777, 0o400)
      assert.strictEqual(statSync(agent.secretsDir).mode & 0o777, 0o700)
      assert.isTrue(Buffer.from(token).equals(readFileSync(file)))
      assert.strictEqual(readFileSync(join(agent.secretsDir, "EMPTY")).length, 0)
      // a second delivery replaces the value
      yield* conn.deliverSecrets([{ name: "API_TOKEN", value: new TextEncoder().encode("v2") }])
      assert.strictEqual(readFileSync(file, "utf8"), "v2")
      const bad = yield* Effect.either(conn.deliverSecrets([{ name: "../escape", value: new Uint8Array() }]))
      assert.isTrue(Either.isLeft(bad) && bad.left._tag === "GuestRemoteError")
    }))

  live(
    "freshens inside the agent: in host test mode every step is validated and skipped",
    () =>
      Effect.gen(function*() {
        const { conn } = yield* connectedAgent
        assert.include(conn.agent?.capabilities ?? [], "freshen")
        const before = { hostname: hostname(), time: Date.now() }
        const result = yield* conn.freshen!({
          time: { seconds: 86400, nanoseconds: 999_999_999 }, // 1970: a host clock that obeyed would show it
          entropy: new Uint8Array(randomBytes(4096)),
          hostname: "kid-1.example-host",
          newMachineId: true
        })
        assert.deepStrictEqual(result, {
          clock: { outcome: "skipped" },
          rng: { outcome: "skipped" },
          hostname: { outcome: "skipped" },
          machineId: { outcome: "skipped" }
        })
        assert.strictEqual(hostname(), before.hostname)
        assert.isAtLeast(Date.now(), before.time)
        // Only what was asked for is reported.
        assert.deepStrictEqual(yield* conn.freshen!({ entropy: new Uint8Array(64) }), {
          rng: { outcome: "skipped" }
        })
        assert.deepStrictEqual(yield* conn.freshen!({}), {})
        // Disks are neither probed nor mounted on the host.
        assert.deepStrictEqual(yield* conn.freshen!({ disks: "vdb:/work:rw,vdc:/data:ro" }), {
          disks: { outcome: "skipped" }
        })
        // The host refuses what the agent would refuse, before sending it.
        for (
          const bad of [
            { hostname: "two words" },
            { hostname: "h".repeat(65) },
            { hostname: "" },
            { entropy: new Uint8Array(4097) },
            { entropy: new Uint8Array(0) },
            { time: { seconds: 1, nanoseconds: 1e9 } },
            { time: { seconds: -1, nanoseconds: 0 } },
            { disks: "vdb:/work/../etc:rw" },
            { disks: "sda:/work" },
            { disks: "vdb:relative" },
            { disks: "vdb:/a,,vdc:/b" }
          ]
        ) {
          const refused = yield* Effect.either(conn.freshen!(bad))
          assert.isTrue(
            Either.isLeft(refused) && refused.left._tag === "GuestRemoteError"
              && refused.left.code === "invalid_argument",
            JSON.stringify(bad)
          )
        }
        yield* conn.ping
      })
  )

  live(
    "refuses a malformed FRESHEN with bad_message, and still answers an unknown type as before",
    () =>
      Effect.gen(function*() {
        const { agent } = yield* connectedAgent
        const raw = yield* Effect.acquireRelease(
          Effect.promise(() => RawClient.connect(agent.socket)),
          (c) => Effect.sync(() => c.close())
        )
        raw.send(0, { _tag: "Hello", version: 1, capabilities: [] })
        const hello = yield* Effect.promise(() => raw.next(0))
        assert.isTrue(hello?._tag === "Hello" && hello.capabilities.includes("freshen"))
        const freshen = (stream: number, fields: FieldWriter) => {
          const payload = fields.finish()
          raw.write(
            new Uint8Array([...encodeHeader(MessageType.Freshen, stream, payload.length), ...payload])
          )
          return Effect.promise(() => raw.next(stream))
        }
        const refusals: Array<[string, FieldWriter]> = [
          ["hostname with a slash", new FieldWriter().string(4, "a/b")],
          ["hostname of 65 bytes", new FieldWriter().string(4, "h".repeat(65))],
          ["hostname with NUL", new FieldWriter().string(4, "a\u0000b")],
          ["entropy of 4097 bytes", new FieldWriter().bytes(3, new Uint8Array(4097))],
          ["empty entropy", new FieldWriter().bytes(3, new Uint8Array())],
          ["nanoseconds alone", new FieldWriter().uint(2, 5, 4)],
          ["nanoseconds of a second", new FieldWriter().uint(1, 5, 8).uint(2, 1e9, 4)],
          ["machine_id 2", new FieldWriter().uint(5, 2, 1)],
          ["time of 3 bytes", new FieldWriter().bytes(1, new Uint8Array(3))],
          ["disks with a parent component", new FieldWriter().string(9, "vdb:/x/..:rw")],
          ["disks with a trailing comma", new FieldWriter().string(9, "vdb:/x,")],
          ["disks with an unknown mode", new FieldWriter().string(9, "vdb:/x:wr")]
        ]
        let stream = 1
        for (const [name, fields] of refusals) {
          const answer = yield* freshen(stream++, fields)
          assert.isTrue(
            answer?._tag === "Error" && answer.code === "bad_message",
            `${name}: ${JSON.stringify(answer)}`
          )
        }
        // At the limits, and with an unknown field: accepted.
        const ok = yield* freshen(
          stream++,
          new FieldWriter().uint(1, 1767225600, 8).uint(2, 999_999_999, 4).bytes(3, new Uint8Array(4096))
            .string(4, "A-z.0-9" + "x".repeat(57)).uint(5, 1, 1).uint(99, 7, 4)
        )
        assert.deepStrictEqual(ok, {
          _tag: "Ok",
          clock: "skipped",
          rng: "skipped",
          hostname: "skipped",
          machineId: "skipped"
        })
        // A type the agent does not know is still a frame-level error on its stream; the connection stays up.
        raw.write(encodeHeader(0x32, stream, 0))
        const unknown = yield* Effect.promise(() => raw.next(stream))
        assert.isTrue(unknown?._tag === "Error" && unknown.code === "unknown_type")
        raw.send(0, { _tag: "Ping", data: new Uint8Array([1]) })
        assert.strictEqual((yield* Effect.promise(() => raw.next(0)))?._tag, "Pong")
      })
  )

  live("answers malformed and oversized frames with errors and stays up", () =>
    Effect.gen(function*() {
      const { agent, conn } = yield* connectedAgent
      const raw = yield* Effect.acquireRelease(
        Effect.promise(() => RawClient.connect(agent.socket)),
        (c) => Effect.sync(() => c.close())
      )
      raw.send(0, { _tag: "Hello", version: 1, capabilities: [] })
      const hello = yield* Effect.promise(() => raw.next(0))
      assert.strictEqual(hello?._tag, "Hello")

      // an EXEC whose only field runs past the end of the payload
      const truncated = new Uint8Array([1, 0, 50, 0, 0, 0, 0x74, 0x72])
      raw.write(new Uint8Array([...encodeHeader(MessageType.Exec, 1, truncated.length), ...truncated]))
      const e1 = yield* Effect.promise(() => raw.next(1))
      assert.isTrue(e1?._tag === "Error" && e1.code === "bad_message")

      // 2 MiB payload: over the 1 MiB limit, skipped without being buffered
      const big = new Uint8Array(2 * 1024 * 1024)
      raw.write(encodeHeader(MessageType.Exec, 2, big.length))
      raw.write(big)
      const e2 = yield* Effect.promise(() => raw.next(2))
      assert.isTrue(e2?._tag === "Error" && e2.code === "frame_too_large")

      // unknown type, and a frame for a stream that was never opened
      raw.write(encodeHeader(0x7e, 3, 0))
      const e3 = yield* Effect.promise(() => raw.next(3))
      assert.isTrue(e3?._tag === "Error" && e3.code === "unknown_type")
      raw.send(99, { _tag: "Stdin", data: new Uint8Array(3) })
      const e4 = yield* Effect.promise(() => raw.next(99))
      assert.isTrue(e4?._tag === "Error" && e4.code === "bad_stream")

      // the same connection still works
      raw.send(100, { _tag: "Exec", argv: ["echo", "alive"], env: [], stdin: false })
      let out = ""
      for (;;) {
        const m = yield* Effect.promise(() => raw.next(100))
        if (m?._tag === "Stdout") out += new TextDecoder().decode(m.data)
        if (m === undefined || m._tag === "Exit") break
      }
      assert.strictEqual(out, "alive\n")

      // a broken header loses the connection, and only that connection
      raw.write(new Uint8Array(12).fill(0x58))
      const fatal = yield* Effect.promise(() => raw.next(0))
      assert.isTrue(fatal?._tag === "Error" && fatal.code === "bad_magic")
      assert.isUndefined(yield* Effect.promise(() => raw.next(0)))
      assert.strictEqual((yield* conn.exec(req(["echo", "still", "up"]))).stdout, "still up\n")

      // credit is enforced: stdin beyond the agent's window is refused
      const flood = yield* Effect.promise(() => RawClient.connect(agent.socket))
      flood.send(0, { _tag: "Hello", version: 1, capabilities: [] })
      yield* Effect.promise(() => flood.next(0))
      flood.send(1, { _tag: "Exec", argv: ["sleep", "5"], env: [], stdin: true })
      for (let i = 0; i < 5; i++) flood.send(1, { _tag: "Stdin", data: new Uint8Array(100 * 1024) })
      let sawFlowControl = false
      for (let i = 0; i < 10 && !sawFlowControl; i++) {
        const m = yield* Effect.promise(() => flood.next(1))
        if (m?._tag === "Error") sawFlowControl = m.code === "flow_control"
      }
      assert.isTrue(sawFlowControl)
      flood.close()

      // an unsupported version is refused
      const old = yield* Effect.promise(() => RawClient.connect(agent.socket))
      old.send(0, { _tag: "Hello", version: 99, capabilities: [] })
      const refused = yield* Effect.promise(() => old.next(0))
      assert.isTrue(refused?._tag === "Error" && refused.code === "unsupported_version")
      old.close()
    }))

  live("connect waits for an agent that starts late, and gives up when told", () =>
    Effect.gen(function*() {
      const channel = yield* GuestChannel
      const dir = makeTempDir()
      // the agent comes up 400 ms after the host starts connecting
      yield* startAgent({ delayMs: 400, dir }).pipe(Effect.forkScoped)
      const conn = yield* channel.connect({ _tag: "UnixSocket", path: join(dir, "agent.sock") }, {
        timeout: "10 seconds"
      })
      yield* conn.ping
      const nobody = yield* Effect.either(
        channel.connect({ _tag: "UnixSocket", path: join(dir, "nobody.sock") }, { timeout: "300 millis" })
      )
      assert.isTrue(Either.isLeft(nobody) && nobody.left._tag === "GuestUnreachable")
    }))

  live("shuts the agent down on request", () =>
    Effect.gen(function*() {
      const { agent, conn } = yield* connectedAgent
      const exited = new Promise<number | null>((ok) => agent.process.once("exit", (code) => ok(code)))
      yield* conn.shutdown
      const code = yield* Effect.promise(() => exited)
      assert.strictEqual(code, 0)
      const after = yield* Effect.either(conn.ping)
      assert.isTrue(Either.isLeft(after) && after.left._tag === "GuestUnreachable")
    }))
})

describe("the agent binary", () => {
  it("is static and under 1 MiB", () => {
    const agentBinary = join(guestDir, "build/microagent-agent") // the shipped build, whatever ran above
    // no PT_INTERP program header: nothing for a dynamic loader to do
    assert.isBelow(statSync(agentBinary).size, 1024 * 1024)
    const elf = readFileSync(agentBinary)
    assert.strictEqual(elf.subarray(0, 4).toString("latin1"), "\x7fELF")
    const phoff = Number(elf.readBigUInt64LE(0x20))
    const phentsize = elf.readUInt16LE(0x36)
    const phnum = elf.readUInt16LE(0x38)
    for (let i = 0; i < phnum; i++) assert.notStrictEqual(elf.readUInt32LE(phoff + i * phentsize), 3)
  })
})

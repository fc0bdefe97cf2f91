/**
 * Freshening a guest resumed from a memory snapshot: through FRESHEN against the real agent (host test
 * mode, where every step is skipped, not applied), through the old commands when the agent does not know
 * FRESHEN, and which failures are fatal (identity) and which are recorded (clock, RNG).
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Layer, Option, Stream } from "effect"
import { beforeAll } from "vitest"
import { ExecRequest, ExecResult } from "../../src/domain/Exec.ts"
import { AgentChannel } from "../../src/layers/guest/AgentChannel.ts"
import { freshenGuest } from "../../src/programs/internal/Freshen.ts"
import {
  type FreshenRequest,
  type FreshenResult,
  GuestChannel,
  type GuestConnection,
  GuestUnsupported
} from "../../src/services/GuestChannel.ts"
import { VmHandle } from "../../src/services/Hypervisor.ts"
import { buildAgent, startAgent } from "../guest/agent.ts"

beforeAll(() => buildAgent(), 120_000)

const handleFor = (path: string) =>
  new VmHandle({ backend: "qemu", pid: 1, channel: { _tag: "UnixSocket", path }, consoleLog: "/dev/null" })

/** A connection whose FRESHEN answers `answer` and whose execs succeed; both are recorded. */
const scripted = (answer: (request: FreshenRequest) => Effect.Effect<FreshenResult, GuestUnsupported>) => {
  const execs: Array<ReadonlyArray<string>> = []
  const freshens: Array<FreshenRequest> = []
  const connection: GuestConnection = {
    exec: (request: ExecRequest) =>
      Effect.sync(() => {
        execs.push(request.argv)
        return new ExecResult({
          status: "exited",
          exitCode: 0,
          stdout: "",
          stderr: "",
          stdoutTruncated: false,
          stderrTruncated: false,
          durationMs: 1
        })
      }),
    execStream: () => Stream.die("not used"),
    putFile: () => Effect.die("not used"),
    getFile: () => Effect.die("not used"),
    deliverSecrets: () => Effect.die("not used"),
    freshen: (request) =>
      Effect.suspend(() => {
        freshens.push(request)
        return answer(request)
      }),
    ping: Effect.void,
    shutdown: Effect.void
  }
  const layer = Layer.succeed(GuestChannel, GuestChannel.of({ connect: () => Effect.succeed(connection) }))
  return { execs, freshens, layer }
}

const failureOf = <A, E>(exit: Exit.Exit<A, E>) =>
  Exit.isFailure(exit) ? Option.getOrUndefined(Cause.failureOption(exit.cause)) : undefined

describe("freshenGuest", () => {
  it.scopedLive("asks the real agent in one FRESHEN; in host test mode it reports every step skipped", () =>
    Effect.gen(function*() {
      const agent = yield* startAgent()
      const result = yield* freshenGuest("w", handleFor(agent.socket), { hostname: "kid-1" }).pipe(
        Effect.provide(AgentChannel.layer)
      )
      assert.deepStrictEqual(result, {
        clock: false,
        rng: false,
        problems: ["clock: skipped", "rng: skipped", "hostname: skipped", "machine-id: skipped"]
      })
    }))

  it.effect("sends the host's clock, 512 random bytes and, for a copy, its hostname and a new machine-id", () =>
    Effect.gen(function*() {
      const fake = scripted(() =>
        Effect.succeed({
          clock: { outcome: "done" },
          rng: { outcome: "done" },
          hostname: { outcome: "done" },
          machineId: { outcome: "absent" }
        })
      )
      const before = Math.floor(Date.now() / 1000)
      const result = yield* freshenGuest("w", handleFor("/nowhere"), { hostname: "kid-2" }).pipe(
        Effect.provide(fake.layer)
      )
      assert.deepStrictEqual(result, { clock: true, rng: true, problems: [] })
      assert.deepStrictEqual(fake.execs, [], "no process spawned")
      const sent = fake.freshens[0]!
      assert.isAtLeast(sent.time!.seconds, before)
      assert.isBelow(sent.time!.nanoseconds, 1e9)
      assert.strictEqual(sent.entropy?.length, 512)
      assert.strictEqual(sent.hostname, "kid-2")
      assert.isTrue(sent.newMachineId)
      // A plain restore keeps its name.
      yield* freshenGuest("w", handleFor("/nowhere")).pipe(Effect.provide(fake.layer))
      assert.isUndefined(fake.freshens[1]!.hostname)
      assert.isUndefined(fake.freshens[1]!.newMachineId)
    }))

  it.effect("records a clock or RNG that failed; fails on an identity that could not be set", () =>
    Effect.gen(function*() {
      const clockless = scripted(() =>
        Effect.succeed({ clock: { outcome: "failed", errno: 1 }, rng: { outcome: "done" } })
      )
      const recorded = yield* freshenGuest("w", handleFor("/nowhere")).pipe(Effect.provide(clockless.layer))
      assert.deepStrictEqual(recorded, { clock: false, rng: true, problems: ["clock: failed (EPERM)"] })

      for (
        const result of [
          { hostname: { outcome: "failed", errno: 30 }, machineId: { outcome: "done" } },
          { hostname: { outcome: "done" }, machineId: { outcome: "failed", errno: 28 } },
          { hostname: { outcome: "done" } }
        ] satisfies Array<FreshenResult>
      ) {
        const fake = scripted(() =>
          Effect.succeed({ clock: { outcome: "done" }, rng: { outcome: "done" }, ...result })
        )
        const exit = yield* Effect.exit(
          freshenGuest("w", handleFor("/nowhere"), { hostname: "kid-3" }).pipe(Effect.provide(fake.layer))
        )
        const error = failureOf(exit)
        assert.strictEqual(error?._tag, "Permanent", JSON.stringify(result))
        assert.include(error?.message ?? "", "setting ")
      }
    }))

  it.effect("falls back to the guest's own commands when the agent does not know FRESHEN", () =>
    Effect.gen(function*() {
      const old = scripted(() =>
        Effect.fail(
          new GuestUnsupported({ operation: "freshen", message: "the agent does not know FRESHEN" })
        )
      )
      const result = yield* freshenGuest("w", handleFor("/nowhere"), { hostname: "kid-4" }).pipe(
        Effect.provide(old.layer)
      )
      assert.deepStrictEqual(result, { clock: true, rng: true, problems: [] })
      assert.strictEqual(old.freshens.length, 1)
      assert.deepStrictEqual(old.execs.map((argv) => argv.slice(0, 2)), [["date", "-u"], ["sh", "-c"], [
        "sh",
        "-c"
      ]])
      assert.strictEqual(old.execs[2]!.at(-1), "kid-4")
    }))
})

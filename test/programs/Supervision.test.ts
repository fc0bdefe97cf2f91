/**
 * Services, health checks and `supervise` on the fake backend (commands run as host processes in the
 * workspace's scratch root): the guest-side service supervisor and its back-off, a failing check that
 * fails the workspace, and the supervise loop under each policy.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Schedule } from "effect"
import * as NodeFs from "node:fs"
import * as NodeHttp from "node:http"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { HealthCheck, PublishedPort } from "../../src/domain/Workspace.ts"
import { create } from "../../src/programs/Create.ts"
import { kill } from "../../src/programs/Halt.ts"
import { checkWorkspace, failUnhealthy, type HealthTrack, probe } from "../../src/programs/Health.ts"
import { collectService, serviceDir } from "../../src/programs/Service.ts"
import { start } from "../../src/programs/Start.ts"
import { supervise } from "../../src/programs/Supervise.ts"
import { StateStore } from "../../src/services/StateStore.ts"
import { fakeEnvironment } from "../support/fakeEnvironment.ts"

/** Running (a zombie waiting for its reaper counts as gone). */
const alive = (pid: number) => {
  try {
    return !/^\d+ \(.*\) Z/.test(NodeFs.readFileSync(`/proc/${pid}/stat`, "utf8"))
  } catch {
    return false
  }
}

const tempDir = Effect.acquireRelease(
  Effect.sync(() => NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-supervision-"))),
  (dir) => Effect.sync(() => NodeFs.rmSync(dir, { recursive: true, force: true }))
)

describe("services", () => {
  it.scopedLive("the guest restarts an exiting service with a doubling delay; the host records each restart", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "svc", service: "echo ran >> svc.log; exit 7" })
      const running = yield* start("svc")
      assert.strictEqual(running.serviceStatus?.restarts, 0)
      const dir = NodePath.join(running.rootfsPath, serviceDir)
      // It exits at once, each time: restarts after 1 s, 2 s, then 4 s.
      const ws = yield* collectService("svc").pipe(
        Effect.filterOrFail((w) => (w.serviceStatus?.restarts ?? 0) >= 3, () => "not yet"),
        Effect.retry({ schedule: Schedule.spaced("200 millis"), times: 100 })
      )
      assert.strictEqual(ws.serviceStatus?.restarts, 3)
      assert.strictEqual(ws.serviceStatus?.lastExitCode, 7)
      assert.strictEqual(ws.serviceStatus?.lastDelaySeconds, 4)
      const store = yield* StateStore
      const details = (yield* store.events("svc")).filter((e) => e.type === "service").map((e) => e.detail)
      // How long each run lasted is whole seconds of the guest's clock: 0, or 1 on a loaded host.
      assert.deepStrictEqual(details.map((d) => d.replace(/after [01]s;/, "after Ns;")), [
        "started: echo ran >> svc.log; exit 7",
        "exited 7 after Ns; restart 1 in 1s",
        "exited 7 after Ns; restart 2 in 2s",
        "exited 7 after Ns; restart 3 in 4s"
      ])
      // Collected once: a second look adds nothing.
      assert.strictEqual((yield* collectService("svc")).serviceStatus?.restarts, 3)
      assert.strictEqual(
        NodeFs.readFileSync(NodePath.join(running.rootfsPath, "svc.log"), "utf8"),
        "ran\n".repeat(3)
      )
      // The supervisor goes with the VM.
      const supervisor = Number(NodeFs.readFileSync(NodePath.join(dir, "supervisor"), "utf8"))
      assert.isTrue(alive(supervisor))
      yield* kill("svc")
      assert.isFalse(alive(supervisor))
    }).pipe(Effect.provide(fakeEnvironment)))
})

describe("health checks", () => {
  it.scopedLive("retries failures in a row kill the VM and record the workspace failed, with the reason", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const marker = NodePath.join(dir, "sick")
      yield* create({
        image: "alpine",
        name: "checked",
        health: new HealthCheck({
          exec: ["test", "!", "-e", marker],
          intervalSeconds: 10,
          timeoutSeconds: 5,
          retries: 2,
          startPeriodSeconds: 60
        })
      })
      const running = yield* start("checked")
      const t0 = Date.now()
      // The first look only sets the start period.
      let track: HealthTrack | undefined = yield* checkWorkspace(running, undefined, t0)
      assert.deepStrictEqual(track, { sessionId: running.sessionId!, failures: 0, nextAt: t0 + 60_000 })
      NodeFs.writeFileSync(marker, "")
      // While the start is still at its setup, nothing is probed and the start period has not begun.
      const inSetup = { ...running, setup: ["sleep 600"], setupDone: undefined } as typeof running
      assert.deepStrictEqual(
        yield* checkWorkspace(inSetup, track, t0 + 500_000),
        { sessionId: running.sessionId!, failures: 0, nextAt: t0 + 560_000 }
      )
      // Within the start period: no probe.
      track = yield* checkWorkspace(running, track, t0 + 59_000)
      assert.strictEqual(track?.failures, 0)
      track = yield* checkWorkspace(running, track, t0 + 60_000)
      assert.strictEqual(track?.failures, 1)
      // Healthy again resets the count.
      NodeFs.rmSync(marker)
      track = yield* checkWorkspace(running, track, t0 + 70_000)
      assert.strictEqual(track?.failures, 0)
      NodeFs.writeFileSync(marker, "")
      track = yield* checkWorkspace(running, track, t0 + 80_000)
      // Not yet due.
      track = yield* checkWorkspace(running, track, t0 + 85_000)
      assert.strictEqual(track?.failures, 1)
      track = yield* checkWorkspace(running, track, t0 + 90_000)
      assert.isUndefined(track)
      const store = yield* StateStore
      const failed = yield* store.get("checked")
      assert.strictEqual(failed.state, "failed")
      assert.isUndefined(failed.vm)
      assert.match(failed.failure ?? "", /^health check failed 2 times in a row: test ! -e .*sick: exit 1$/)
      const events = yield* store.events("checked")
      assert.deepStrictEqual(
        events.filter((e) => e.type === "health").map((e) => e.detail.replace(marker, "M")),
        [
          "check failed (1/2): test ! -e M: exit 1",
          "healthy again",
          "check failed (1/2): test ! -e M: exit 1",
          "check failed (2/2): test ! -e M: exit 1"
        ]
      )
      assert.strictEqual(events.at(-1)?.detail, failed.failure)
      // The next start clears the reason.
      const restarted = yield* start("checked")
      assert.isUndefined(restarted.failure)
      // A verdict about the earlier start, arriving late (a second checker), leaves the new one alone.
      const late = yield* Effect.exit(failUnhealthy("checked", "late verdict", running.sessionId!))
      assert.isTrue(Exit.isFailure(late) && String(late.cause).includes("was started again"))
      const still = yield* store.get("checked")
      assert.deepInclude(still, { state: "running", sessionId: restarted.sessionId })
      assert.isDefined(still.vm)
      assert.isFalse((yield* store.events("checked")).some((e) => e.detail === "late verdict"))
      yield* kill("checked")
    }).pipe(Effect.provide(fakeEnvironment)))
})

describe("HTTP health checks", () => {
  it.scopedLive("GET the published port of the guest port from the host; create refuses a port that is not published", () =>
    Effect.gen(function*() {
      let status = 200
      const server = NodeHttp.createServer((request, response) => {
        response.statusCode = request.url === "/healthz" ? status : 404
        response.end()
      })
      const port = yield* Effect.async<number>((resume) => {
        server.listen(
          0,
          "127.0.0.1",
          () => resume(Effect.succeed((server.address() as { port: number }).port))
        )
      })
      yield* Effect.addFinalizer(() => Effect.sync(() => server.close()))
      const check = new HealthCheck({
        httpGet: { path: "/healthz", port: 8080 },
        intervalSeconds: 1,
        timeoutSeconds: 2,
        retries: 1,
        startPeriodSeconds: 0
      })
      const refused = yield* Effect.flip(create({ image: "alpine", name: "web", health: check }))
      assert.include(refused.message, "guest port 8080, which the workspace does not publish")
      // The fake backend publishes no ports: the record is given one that leads to the test's server.
      yield* create({ image: "alpine", name: "web" })
      const running = yield* start("web")
      const published = {
        ...running,
        health: check,
        ports: [new PublishedPort({ hostIp: "127.0.0.1", hostPort: port, guestPort: 8080, protocol: "tcp" })]
      } as typeof running
      assert.isUndefined(yield* probe(published, check))
      status = 503
      assert.strictEqual(yield* probe(published, check), "GET /healthz answered 503")
      assert.strictEqual(
        yield* probe(published, new HealthCheck({ ...check, httpGet: { path: "/healthz", port: 9090 } })),
        "guest port 9090 is not published"
      )
      server.close()
      assert.include(yield* probe(published, check), "GET /healthz: connect ECONNREFUSED")
      yield* kill("web")
    }).pipe(Effect.provide(fakeEnvironment)))
})

describe("supervise", () => {
  const failing = new HealthCheck({
    exec: ["false"],
    intervalSeconds: 1,
    timeoutSeconds: 5,
    retries: 1,
    startPeriodSeconds: 0
  })

  it.scopedLive("on-failure: restarts a workspace its health check failed, until --max-restarts", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "flaky", restart: "on-failure", health: failing })
      const report = yield* supervise("flaky", { intervalSeconds: 1, maxRestarts: 2 })
      assert.deepInclude(report, { workspace: "flaky", restarts: 2, state: "failed" })
      assert.include(report.reason, "--max-restarts")
      const store = yield* StateStore
      const details = (yield* store.events("flaky")).filter((e) => e.type === "supervise").map((e) =>
        e.detail
      )
      assert.deepStrictEqual(details.map((d) => d.replace(/ \(.*\)$/, "")), [
        "started from prepared",
        "restart 1 from failed",
        "restart 2 from failed"
      ])
      assert.include(details[1]!, "health check failed 1 times in a row: false: exit 1")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("on-failure: a VMM that dies is noticed and the workspace started again", () =>
    Effect.gen(function*() {
      const store = yield* StateStore
      yield* create({ image: "alpine", name: "crashy", restart: "on-failure" })
      const supervised = yield* Effect.fork(supervise("crashy", { intervalSeconds: 1, maxRestarts: 1 }))
      const killVmm = (not?: number) =>
        store.get("crashy").pipe(
          Effect.map((
            ws
          ) => (ws.state === "running" ? (ws.vm as { pid?: number } | undefined)?.pid : undefined)),
          Effect.filterOrFail((pid): pid is number => pid !== undefined && pid !== not, () => "not yet"),
          Effect.retry({ schedule: Schedule.spaced("100 millis"), times: 200 }),
          Effect.tap((pid) => Effect.sync(() => process.kill(pid, "SIGKILL")))
        )
      const first = yield* killVmm()
      yield* killVmm(first)
      const report = yield* Fiber.join(supervised)
      assert.deepInclude(report, { restarts: 1, state: "failed" })
      const details = (yield* store.events("crashy")).filter((e) => e.type === "supervise").map((e) =>
        e.detail
      )
      assert.deepStrictEqual(details, ["started from prepared", "restart 1 from failed"])
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("never: does not restart; a running workspace is left running when the loop ends", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "once", restart: "never", health: failing })
      const report = yield* supervise("once", { intervalSeconds: 1 })
      assert.deepInclude(report, { restarts: 0, state: "failed" })
      assert.include(report.reason, "restart policy is never")

      yield* create({ image: "alpine", name: "up", restart: "always" })
      // Interrupted (a Ctrl-C) while the workspace runs: the VM stays up.
      yield* supervise("up", { intervalSeconds: 1 }).pipe(Effect.timeout("2500 millis"), Effect.ignore)
      const store = yield* StateStore
      assert.strictEqual((yield* store.get("up")).state, "running")
      yield* kill("up")
    }).pipe(Effect.provide(fakeEnvironment)))
})

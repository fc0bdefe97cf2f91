/**
 * Cluster benchmark: runners (`serve runner`) on this machine, a private PostgreSQL, real QEMU
 * workspaces of the `tiny` profile on the default image. Prints one JSON object on stdout:
 * - `single` / `cluster`: create + start + first `exec true` of a new workspace, wall time, through
 *   runner r1's local runtime client (`MicroagentClient.layerRuntime`) and through the cluster client
 *   (`ClusterClient.layer`: placement, directory claim, routing through sharding), medians over
 *   BENCH_CLUSTER_ROUNDS rounds (default 3), alternating, after one untimed warm-up of each;
 *   `ratio = cluster / single` (target <= 1.15);
 * - `routing`: `exec true` on one running workspace held by r1, p50/p90 over BENCH_CLUSTER_EXECS calls
 *   (default 100) through the cluster and through r1's runtime, interleaved call by call;
 *   `overheadP50Ms = cluster p50 - local p50` (target <= 3 ms);
 * - `perMessage`: p50 of the control plane's per-message costs over 50 calls each: `Directory.runners`
 *   (one SELECT), `Directory.lookup(name)`, and the cluster client's `list({})` (asks every live runner).
 *
 * Same work on both sides: BENCH_CLUSTER_RUNNERS runners (default 2, so that `list` fans out) are
 * started, each labelled `bench=<its id>`, and every create request carries `constraints: { bench: "r1" }`.
 * Placement still ranks all runners (that cost is part of the cluster figure), but the workspace always
 * lands on r1, so both sides boot in the same runtime, state directory and image cache; a single host
 * ignores `constraints`, so the very same request goes to both clients.
 */
import { Context, Duration, Effect, Layer } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import * as ClusterClient from "../src/cluster/Client.ts"
import { layerDatabase } from "../src/cluster/ClusterLayers.ts"
import { Directory, layer as layerDirectory } from "../src/cluster/Directory.ts"
import { defaultImage } from "../src/layers/image/BuiltinImages.ts"
import { MicroagentClient } from "../src/rpc/Client.ts"
import { type RunnerProcess, startRunner } from "../test/support/clusterRunner.ts"
import { type Postgres, startPostgres } from "../test/support/postgres.ts"
import { freePort } from "../test/support/registry.ts"
import { cleanup, cli, loadAverage, log, median, percentile, stateDir, stopRuntime } from "./lib.ts"

const rounds = Number(process.env.BENCH_CLUSTER_ROUNDS ?? 3)
const execs = Number(process.env.BENCH_CLUSTER_EXECS ?? 100)
const runnerCount = Math.max(1, Number(process.env.BENCH_CLUSTER_RUNNERS ?? 2))
const messages = 50
// The runners' lock expiry: a runner whose last heartbeat is older reads lost. Longer than the e2e
// test's 4 s so that a 2-core host busy with TCG boots never reads r1 as lost mid-bench.
const lockExpirySeconds = 10

const round = (x: number, digits = 2) => Number(x.toFixed(digits))
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

const stopRunner = async (r: RunnerProcess) => {
  const child = r.process
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  child.kill("SIGTERM")
  await Promise.race([exited, sleep(15_000)])
  if (child.exitCode === null && child.signalCode === null) {
    log("cluster", `runner ${r.id} ignored SIGTERM for 15 s: SIGKILL`)
    child.kill("SIGKILL")
    await Promise.race([exited, sleep(5_000)])
  }
}

/** Deletes what a runner's own store still holds (a bench cut short), through its host's CLI. */
const deleteLeftovers = async (state: string) => {
  const local = await cli(state, ["list", "--quiet"])
  for (const name of local.stdout.split("\n").map((line) => line.trim()).filter((line) => line !== "")) {
    log("cluster", `deleting leftover ${name} in ${state}`)
    await cli(state, ["delete", "--force", name])
  }
}

const scratch = stateDir("cluster")
const runners: Array<RunnerProcess> = []
let postgres: Postgres | undefined

try {
  const loadBefore = loadAverage()
  postgres = await startPostgres()
  const url = postgres.url
  for (let i = 1; i <= runnerCount; i++) {
    const id = `r${i}`
    const state = NodePath.join(scratch, id)
    NodeFs.mkdirSync(state, { recursive: true, mode: 0o700 })
    runners.push({ id, stateDir: state, port: await freePort(), flags: ["--labels", `bench=${id}`], log: "" })
  }
  // One at a time: each imports nothing yet, but starting runtimes side by side on 2 cores only slows both.
  for (const r of runners) {
    await startRunner(r, { url, lockExpirySeconds, env: { MICROAGENT_RUNTIME_IDLE_SECONDS: "300" } })
    log("cluster", `runner ${r.id} joined`)
  }
  const r1 = runners[0]!
  // The bench's own runtime client must find r1's runtime with the same settings if it ever revives it.
  Object.assign(process.env, { MICROAGENT_BACKEND: "qemu", MICROAGENT_RUNTIME_IDLE_SECONDS: "300" })

  const figures = await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const local = Context.get(
      yield* Layer.build(MicroagentClient.layerRuntime(r1.stateDir)),
      MicroagentClient
    )
    const cluster = Context.get(
      yield* Layer.build(ClusterClient.layer({ url, lockExpiryMs: lockExpirySeconds * 1000 })),
      MicroagentClient
    )
    const directory = Context.get(
      yield* Layer.build(layerDirectory.pipe(Layer.provide(layerDatabase(url)))),
      Directory
    )
    const created = new Set<string>()
    // Deleted through the cluster client however the bench ends (the runner releases the name).
    yield* Effect.addFinalizer(() =>
      Effect.forEach(
        [...created],
        (name) =>
          cluster.delete({ name, force: true }).pipe(
            Effect.timeout(Duration.minutes(2)),
            Effect.tapError((error) => Effect.sync(() => log("cluster", `delete ${name}: ${String(error)}`))),
            Effect.ignore
          ),
        { discard: true }
      )
    )

    const request = (name: string) => ({
      image: defaultImage,
      name,
      profile: "tiny" as const,
      constraints: { bench: r1.id }
    })

    /** create + start + first exec, timed; the workspace is deleted afterwards (untimed). */
    const cycle = (via: "single" | "cluster", name: string) =>
      Effect.gen(function*() {
        const client = via === "single" ? local : cluster
        created.add(name)
        const started = performance.now()
        const workspace = yield* client.create(request(name))
        yield* client.start({ name })
        const result = yield* client.exec({ name, argv: ["true"] })
        const ms = performance.now() - started
        if (result.exitCode !== 0) {
          return yield* Effect.dieMessage(`exec true in ${name} exited ${result.exitCode}`)
        }
        if (via === "cluster" && workspace.host !== r1.id) {
          return yield* Effect.dieMessage(`${name} was placed on ${workspace.host}, not ${r1.id}`)
        }
        yield* client.delete({ name, force: true })
        created.delete(name)
        log("cluster", `${via} ${name}: ${ms.toFixed(0)} ms`)
        return ms
      }).pipe(Effect.timeout(Duration.minutes(5)))

    yield* cycle("single", "warm-single")
    yield* cycle("cluster", "warm-cluster")
    const single: Array<number> = []
    const viaCluster: Array<number> = []
    for (let i = 1; i <= rounds; i++) {
      single.push(yield* cycle("single", `single-${i}`))
      viaCluster.push(yield* cycle("cluster", `cluster-${i}`))
    }

    // Routing: one running workspace held by r1, `exec true` through both clients, call by call.
    const target = "route"
    created.add(target)
    const placed = yield* cluster.create(request(target))
    if (placed.host !== r1.id) return yield* Effect.dieMessage(`${target} was placed on ${placed.host}`)
    yield* cluster.start({ name: target })
    const time = <A, E>(call: Effect.Effect<A, E>) =>
      Effect.gen(function*() {
        const started = performance.now()
        yield* call
        return performance.now() - started
      })
    const localExec = local.exec({ name: target, argv: ["true"] })
    const clusterExec = cluster.exec({ name: target, argv: ["true"] })
    for (let i = 0; i < 10; i++) {
      yield* localExec
      yield* clusterExec
    }
    const localTimes: Array<number> = []
    const clusterTimes: Array<number> = []
    for (let i = 0; i < execs; i++) {
      localTimes.push(yield* time(localExec))
      clusterTimes.push(yield* time(clusterExec))
    }
    log(
      "cluster",
      `exec p50 local ${median(localTimes).toFixed(2)} ms, cluster ${median(clusterTimes).toFixed(2)} ms`
    )

    // Per-message costs of the control plane.
    const p50Of = <A, E>(call: Effect.Effect<A, E>) =>
      Effect.gen(function*() {
        for (let i = 0; i < 5; i++) yield* call
        const xs: Array<number> = []
        for (let i = 0; i < messages; i++) xs.push(yield* time(call))
        return round(median(xs))
      })
    const runnersP50 = yield* p50Of(directory.runners)
    const lookupP50 = yield* p50Of(directory.lookup(target))
    const listP50 = yield* p50Of(cluster.list({}))
    const liveRunners = (yield* directory.runners).filter((r) => r.alive).length

    yield* cluster.delete({ name: target, force: true })
    created.delete(target)

    return {
      single: { medianMs: round(median(single), 0), samples: single.map((x) => round(x, 0)) },
      cluster: { medianMs: round(median(viaCluster), 0), samples: viaCluster.map((x) => round(x, 0)) },
      ratio: round(median(viaCluster) / median(single)),
      target_ratio: 1.15,
      routing: {
        calls: execs,
        localP50Ms: round(median(localTimes)),
        localP90Ms: round(percentile(localTimes, 90)),
        clusterP50Ms: round(median(clusterTimes)),
        clusterP90Ms: round(percentile(clusterTimes, 90)),
        overheadP50Ms: round(median(clusterTimes) - median(localTimes)),
        target_overheadP50Ms: 3
      },
      perMessage: {
        calls: messages,
        directoryRunnersP50Ms: runnersP50,
        directoryLookupP50Ms: lookupP50,
        clusterListP50Ms: listP50
      },
      runners: liveRunners
    }
  })))

  process.stdout.write(
    `${
      JSON.stringify({
        bench: "cluster",
        ...figures,
        loadAverage: { before: loadBefore, after: loadAverage() }
      })
    }\n`
  )
} finally {
  for (const r of runners) await stopRunner(r)
  for (const r of runners) {
    await deleteLeftovers(r.stateDir).catch(() => undefined)
    stopRuntime(r.stateDir)
  }
  postgres?.stop()
  for (const r of runners) cleanup(r.stateDir)
  cleanup(scratch)
}

/**
 * The runtime: one long-lived process per state directory, started on demand by the CLI. It serves the
 * RPC API on the state directory's socket (0600), holds the guest connection of every running VM (a
 * VM's channel takes one client at a time), keeps the store in line with the VMMs, and exits once no
 * workspace runs and no client has been connected for a while. VMMs run detached: if the runtime dies
 * they keep running, and the next runtime picks them up from the store; a VMM no live record owns is
 * ended (internal/Orphans.ts). A runtime whose state directory is removed ends its VMMs and exits.
 */
import * as SocketServer from "@effect/platform/SocketServer"
import { RpcSerialization, RpcServer } from "@effect/rpc"
import { Duration, Effect, Layer, Option, Ref } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { isLive } from "../domain/State.ts"
import type { Backend, Workspace } from "../domain/Workspace.ts"
import { withBackend } from "../layers/backends/WorkspaceBackends.ts"
import { fabricProblem, namespaces, removeNamespace } from "../layers/network/Fabric.ts"
import { faultPoint } from "../layers/process/FaultPoint.ts"
import { startTimeOf } from "../layers/process/Processes.ts"
import { endVmm, vmmsOf } from "../layers/process/Vmms.ts"
import { backupIfDue } from "../layers/state/Backups.ts"
import * as Microagent from "../Microagent.ts"
import { collectEntrypoint, pendingResults } from "../programs/Entrypoint.ts"
import { abandonedForks, abandonedRuns, reapAbandoned, stillLive } from "../programs/Gc.ts"
import { checkWorkspace, type HealthTrack, type HealthTracks, makeHealthTracks } from "../programs/Health.ts"
import { releaseMounts } from "../programs/internal/Mounts.ts"
import { detachNetworks } from "../programs/internal/NetworkPlumbing.ts"
import { reapOrphanVmms } from "../programs/internal/Orphans.ts"
import { reconcile } from "../programs/internal/Reconcile.ts"
import { collectService, supervisedServices } from "../programs/Service.ts"
import { snapshotDelete } from "../programs/Snapshot.ts"
import { Rpcs } from "../rpc/Rpcs.ts"
import { RpcHandlers, unixSocketServer } from "../rpc/Server.ts"
import { Egress } from "../services/Egress.ts"
import { Home } from "../services/Home.ts"
import { StateStore } from "../services/StateStore.ts"
import { acquireRuntimeLock } from "./RuntimeLock.ts"

export interface RuntimeOptions {
  /** Seconds without clients and running workspaces before the runtime exits. */
  readonly idleSeconds: number
  readonly defaultBackend?: Backend | undefined
}

export const runtimeFiles = (root: string) => ({
  lock: NodePath.join(root, "run", "runtime.lock"),
  pid: NodePath.join(root, "run", "runtime.pid")
})

interface Activity {
  readonly connections: number
  /** When a connection last opened or closed: a client probes the socket just before it connects. */
  readonly lastChange: number
}

/** Counts the connections a socket server is serving, and when that last changed. */
const countingConnections = (activity: Ref.Ref<Activity>) =>
  Layer.effect(
    SocketServer.SocketServer,
    Effect.map(SocketServer.SocketServer, (inner) =>
      SocketServer.SocketServer.of({
        address: inner.address,
        run: (handler) =>
          inner.run((socket) =>
            Effect.acquireUseRelease(
              Ref.update(activity, (a) => ({ connections: a.connections + 1, lastChange: Date.now() })),
              () => handler(socket),
              () => Ref.update(activity, (a) => ({ connections: a.connections - 1, lastChange: Date.now() }))
            )
          )
      }))
  )

/**
 * Leaving when idle without dropping a client: a CLI may have found the socket just as the runtime
 * decided to go, and its connection would be cut by the exit. So the socket's name goes first (later
 * clients start a new runtime, which waits for this one's lock), pending connections get a moment to
 * be accepted, and whatever did connect is served to its end before the runtime exits.
 *
 * The moment is counted in turns of the event loop as well as in time: on a loaded host the process can
 * be off the CPU for longer than the wait, and then the timer and a pending connection are ready at
 * once. Node runs timers before it accepts, so the runtime saw no connection, left, and the client's
 * connection was reset ("lost the connection to the runtime"). Each turn waits for the loop's I/O
 * phase (where connections are accepted) and then for the fibers that count them.
 */
const leaveWhenIdle = (socket: string, activity: Ref.Ref<Activity>) =>
  Effect.gen(function*() {
    yield* Effect.sync(() => NodeFs.rmSync(socket, { force: true }))
    yield* Effect.sleep(Duration.millis(200))
    for (let turn = 0; turn < 3; turn++) {
      yield* Effect.async<void>((resume) => {
        setImmediate(() => resume(Effect.void))
      })
      yield* Effect.sleep(Duration.millis(10))
    }
    while ((yield* Ref.get(activity)).connections > 0) yield* Effect.sleep(Duration.millis(100))
  })

/** Egress mediators and namespaces left by workspaces that no longer run (normally they go with the VM). */
const reapEgress = withBackend(
  "qemu",
  Effect.gen(function*() {
    const egress = yield* Effect.serviceOption(Egress)
    if (Option.isNone(egress)) return
    const store = yield* StateStore
    const reaped = yield* egress.value.reap(stillLive(store))
    if (reaped.length > 0) yield* Effect.logWarning(`removed egress mediation of ${reaped.join(", ")}`)
  })
).pipe(Effect.ignore)

/** Brings every live record in line with its VMM; true if any workspace is still live. */
export const reconcileAll = (options: { readonly reapOrphans: boolean }) =>
  Effect.gen(function*() {
    const store = yield* StateStore
    // A one-shot run whose process died (the runtime before this one, say) is deleted, its VM killed.
    for (const abandoned of yield* abandonedRuns()) {
      const gone = yield* withBackend(abandoned.backend, reapAbandoned(abandoned.name)).pipe(
        Effect.catchAll(() => Effect.succeed(false))
      )
      if (gone) {
        yield* Effect.logWarning(`deleted one-shot workspace ${abandoned.name}: its run's process is gone`)
      }
    }
    // A fork whose process died (the runtime before this one) is undone whole, as it would have undone
    // itself: its children go, and its capture (captures are looked for on the slower orphan pass).
    const forks = yield* abandonedForks({ withCaptures: options.reapOrphans })
    for (const child of forks.children) {
      const gone = yield* withBackend(child.backend, reapAbandoned(child.name))
      if (gone) yield* Effect.logWarning(`deleted ${child.name}: the fork that made it did not end`)
    }
    for (const capture of forks.captures) {
      yield* snapshotDelete(capture.workspace, capture.tag).pipe(
        Effect.zipRight(
          Effect.logWarning(`deleted ${capture.workspace}:${capture.tag}: its fork did not end`)
        ),
        Effect.ignore
      )
    }
    let live = false
    for (const workspace of yield* store.list) {
      if (!isLive(workspace.state)) continue
      const now = yield* withBackend(
        workspace.backend,
        // A member of a named network that died drops out of its peers' /etc/hosts.
        reconcile(workspace).pipe(
          // A VM that died releases its volume claims as a halt would.
          Effect.tap((after) => isLive(after.state) ? Effect.void : releaseMounts(after)),
          Effect.tap((after) => isLive(after.state) ? Effect.void : detachNetworks(after))
        )
      ).pipe(
        Effect.catchAll(() => Effect.succeed(workspace))
      )
      live ||= isLive(now.state)
    }
    if (options.reapOrphans) {
      // After the records are repaired: a VMM whose start died with the previous runtime is owned by nobody.
      const killed = yield* reapOrphanVmms()
      if (killed.length > 0) yield* Effect.logWarning(`ended VMMs no live record owns: ${killed.join(", ")}`)
      yield* reapEgress
    }
    return live
  })

/** Copies the outcome of every finished entrypoint into its workspace's record; a slow guest is skipped. */
const collectFinished = Effect.gen(function*() {
  for (const workspace of yield* pendingResults) {
    yield* withBackend(workspace.backend, collectEntrypoint(workspace.name)).pipe(
      Effect.timeout(Duration.seconds(10)),
      Effect.ignore
    )
  }
})

/**
 * Health checks and service restarts, beside the main loop (a probe may take its timeout): every
 * second the checks that are due, every few seconds the service restarts the guests logged.
 */
const superviseRunning = (tracks: HealthTracks) =>
  Effect.gen(function*() {
    let lastServicePass = 0
    for (;;) {
      const store = yield* StateStore
      // A busy store skips a pass rather than ending the loop.
      const running = (yield* store.list.pipe(Effect.orElseSucceed((): ReadonlyArray<Workspace> => [])))
        .filter((ws) => ws.state === "running")
      const known = yield* Ref.get(tracks)
      const now = Date.now()
      const next = new Map<string, HealthTrack>()
      yield* Effect.forEach(running.filter((ws) => ws.health !== undefined), (ws) =>
        withBackend(ws.backend, checkWorkspace(ws, known.get(ws.name), now)).pipe(
          Effect.tap((track) =>
            Effect.sync(() =>
              track === undefined ? undefined : next.set(ws.name, track)
            )
          ),
          Effect.catchAllCause((cause) => Effect.logWarning(`health check of ${ws.name} failed`, cause))
        ), { concurrency: "unbounded", discard: true })
      yield* Ref.set(tracks, next)
      if (now - lastServicePass >= serviceScanMs) {
        lastServicePass = now
        const services = yield* supervisedServices.pipe(
          Effect.orElseSucceed((): ReadonlyArray<Workspace> => [])
        )
        for (const workspace of services) {
          yield* withBackend(workspace.backend, collectService(workspace.name)).pipe(
            Effect.timeout(Duration.seconds(10)),
            Effect.ignore
          )
        }
      }
      yield* Effect.sleep(Duration.seconds(1))
    }
  })

/** How often the runtime copies a service's restarts from its guest. */
const serviceScanMs = 2000

/** What identifies the state directory this runtime serves: if it changes, the directory was removed. */
interface DirectoryIdentity {
  readonly root: string
  readonly rootIno: number
  readonly rootDev: number
  readonly lockIno: number
}

const identityOf = (root: string, lock: string): DirectoryIdentity | undefined => {
  try {
    const dir = NodeFs.statSync(root)
    return { root, rootIno: dir.ino, rootDev: dir.dev, lockIno: NodeFs.statSync(lock).ino }
  } catch {
    return undefined
  }
}

const sameDirectory = (a: DirectoryIdentity, b: DirectoryIdentity | undefined) =>
  b !== undefined && a.rootIno === b.rootIno && a.rootDev === b.rootDev && a.lockIno === b.lockIno

/**
 * The state directory was removed (or replaced) under a running runtime: its records and disks are
 * gone, so its VMMs can never be reached again. End them, and the namespaces of its networks, so that
 * nothing of it lives on; the runtime then exits.
 */
const abandonDirectory = (root: string) =>
  Effect.gen(function*() {
    const vmms = vmmsOf(root)
    yield* Effect.forEach(vmms, endVmm, { discard: true })
    if (fabricProblem() === undefined) {
      const left = yield* namespaces(root).pipe(Effect.orElseSucceed((): ReadonlyArray<string> => []))
      yield* Effect.forEach(left, (ns) => Effect.ignore(removeNamespace(ns)), { discard: true })
    }
    yield* Effect.logWarning(
      `state directory ${root} was removed: ended ${vmms.length} VMM(s) (${
        vmms.map((v) => v.pid).join(", ")
      }) and exiting`
    )
  })

/** How often the runtime looks for VMMs no live record owns (a scan of /proc). */
const orphanScanMs = 5000

/** Serves until idle; fails with `Conflict` when another runtime already serves this directory. */
export const serveRuntime = (root: string, options: RuntimeOptions) =>
  Effect.scoped(Effect.gen(function*() {
    const home = yield* Home.make(root)
    const files = runtimeFiles(home.root)
    yield* acquireRuntimeLock(files.lock, home.runtimeSocket)
    yield* Effect.acquireRelease(
      Effect.sync(() =>
        NodeFs.writeFileSync(files.pid, `${process.pid} ${startTimeOf(process.pid) ?? ""}\n`, { mode: 0o600 })
      ),
      () => Effect.sync(() => NodeFs.rmSync(files.pid, { force: true }))
    )
    const activity = yield* Ref.make<Activity>({ connections: 0, lastChange: Date.now() })
    const services = Microagent.layerBackends({ home: home.root, backend: options.defaultBackend })
    const server = RpcServer.layer(Rpcs, { disableFatalDefects: true }).pipe(
      Layer.provide(RpcHandlers),
      Layer.provide(RpcServer.layerProtocolSocketServer),
      Layer.provide(countingConnections(activity)),
      Layer.provide(unixSocketServer(home.runtimeSocket)),
      Layer.provide(RpcSerialization.layerNdjson),
      Layer.provideMerge(services)
    )
    const context = yield* Layer.build(server)
    const identity = identityOf(home.root, files.lock)
    const tracks = yield* makeHealthTracks
    yield* superviseRunning(tracks).pipe(
      Effect.provide(context),
      Effect.catchAllCause((cause) => Effect.logWarning("health checks and services stopped", cause)),
      Effect.forkScoped
    )
    yield* Effect.logInfo(`runtime ${process.pid} serving ${home.runtimeSocket}`)

    // Idle when nothing runs and nobody has been connected for `idleSeconds`.
    let liveUntil = Date.now()
    let lastOrphanScan = 0
    for (;;) {
      if (identity !== undefined && !sameDirectory(identity, identityOf(home.root, files.lock))) {
        yield* abandonDirectory(home.root)
        return
      }
      const reapOrphans = Date.now() - lastOrphanScan >= orphanScanMs
      if (reapOrphans) lastOrphanScan = Date.now()
      yield* backupIfDue(home.database)
      // A failed pass (a busy store, say) must not take the runtime down: count it as live, retry.
      const live = yield* reconcileAll({ reapOrphans }).pipe(
        Effect.provide(context),
        Effect.catchAllCause((cause) => Effect.as(Effect.logWarning("reconcile failed", cause), true))
      )
      // Finished entrypoints are copied into their records, whoever launched them.
      yield* collectFinished.pipe(
        Effect.provide(context),
        Effect.catchAllCause((cause) => Effect.logWarning("collecting entrypoint results failed", cause))
      )
      const now = Date.now()
      if (live) liveUntil = now
      const { connections, lastChange } = yield* Ref.get(activity)
      const quietSince = Math.max(liveUntil, lastChange)
      if (connections === 0 && now - quietSince >= options.idleSeconds * 1000) {
        yield* faultPoint("runtime.leaving")
        yield* leaveWhenIdle(home.runtimeSocket, activity)
        break
      }
      yield* Effect.sleep(Duration.millis(Math.min(1000, Math.max(100, options.idleSeconds * 250))))
    }
    yield* Effect.logInfo(`runtime ${process.pid} idle: exiting`)
  }))

/**
 * `serve runner`: one host's runtime as a runner of the cluster. The runner
 *
 * 1. reconciles first: workspaces of its store that the directory moved elsewhere while it was away are
 *    killed and deleted here; the others are re-adopted (claimed under their name); names the
 *    directory gives it that its store does not hold (a create cut short) are released;
 * 2. beats: every quarter of the lock expiry it writes its capacity, load and cached images to the
 *    directory, and the VMM pids of its movable (`restart: always`) workspaces to its fence file. When
 *    it cannot beat for half the expiry it kills those VMs itself, before anyone may move them;
 * 3. serves the `MicroagentHost` entity of its own id: the workspace procedures, forwarded to the
 *    host's runtime (the same process the local CLI talks to), with admission by declared capacity;
 * 4. takes part in the `supervisor` singleton, which moves `restart: always` workspaces off lost
 *    runners.
 *
 * A fence process outlives the runner: when the runner dies without a word (`kill -9`), it kills the
 * VMs listed in the fence file, so a workspace that is moved never runs on two hosts.
 */
import { Singleton } from "@effect/cluster"
import type { Sharding } from "@effect/cluster/Sharding"
import { Cause, Duration, Effect, Either, Exit, Layer, Option, Ref, Schedule, Schema, Stream } from "effect"
import { spawn } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import {
  Conflict,
  InvalidInput,
  isMicroagentError,
  type MicroagentError,
  ResourceExhausted,
  Transient
} from "../domain/Errors.ts"
import { type Candidate, demandOf, placementDefaultCpus, refusal } from "../domain/Placement.ts"
import {
  type CloneRequest,
  type CreateFromSnapshotRequest,
  CreateRequest,
  forkChildNames,
  type ForkRequest,
  type RunRequest,
  type StartRequest
} from "../domain/Requests.ts"
import { parseSnapshotRef } from "../domain/SnapshotRestore.ts"
import { isLive } from "../domain/State.ts"
import { Workspace } from "../domain/Workspace.ts"
import { MicroagentClient, type MicroagentClientShape } from "../rpc/Client.ts"
import { VmHandle } from "../services/Hypervisor.ts"
import { layerDatabase, layerRunner } from "./ClusterLayers.ts"
import { Directory, layer as layerDirectory } from "./Directory.ts"
import {
  classified,
  everywhereTags,
  maxTransferBytes,
  MicroagentHost,
  type Resources,
  routedTags,
  type RunnerStatus
} from "./Protocol.ts"
import { supervise } from "./Supervisor.ts"
import { packStaged, stagingDir, unpack } from "./Transfer.ts"

export interface HostPort {
  readonly host: string
  readonly port: number
}

export interface RunnerOptions {
  /** The state directory whose runtime this runner serves. */
  readonly root: string
  readonly url: string
  readonly runnerId: string
  readonly advertise: HostPort
  readonly listen?: HostPort | undefined
  readonly labels: Readonly<Record<string, string>>
  /** Declared capacity; what is left out is measured (memory, CPUs) or unlimited (workspaces). */
  readonly capacity: Partial<Resources>
  readonly lockExpiryMs: number
  /** A runner silent this long that holds no workspace is forgotten (0: never). */
  readonly forgetAfterMs: number
}

const unlimitedWorkspaces = 1_000_000

const encodeWorkspace = Schema.encodeSync(Workspace)
const encodeCreate = Schema.encodeSync(CreateRequest)

const measuredCapacity = (
  declared: Partial<Resources>,
  hostMemoryMiB: number,
  hostCpus: number
): Resources => ({
  memoryMiB: declared.memoryMiB ?? Math.max(256, hostMemoryMiB - 1024),
  cpus: declared.cpus ?? hostCpus * 4,
  workspaces: declared.workspaces ?? unlimitedWorkspaces
})

/** What the workspaces of this store hold: all count as workspaces, the live and prepared ones as load. */
export const loadOf = (workspaces: ReadonlyArray<Workspace>): Resources => {
  let memoryMiB = 0
  let cpus = 0
  for (const workspace of workspaces) {
    if (isLive(workspace.state) || workspace.state === "prepared") {
      memoryMiB += workspace.resources.memoryMiB
      cpus += workspace.resources.cpus
    }
  }
  return { memoryMiB, cpus, workspaces: workspaces.length }
}

const randomSuffix = () => Math.random().toString(16).slice(2, 8).padEnd(6, "0")

const vmHandleOf = (workspace: Workspace) => Schema.decodeUnknownOption(VmHandle)(workspace.vm)

/**
 * The fence: a shell that waits for a process to die (a zombie counts as dead; pid 0 is dead at once),
 * then kills each VMM of the fence file whose start time still matches (a recycled pid is left alone).
 */
const fenceScript = `
runner=$1; file=$2
alive() { [ -r /proc/$1/stat ] && ! sed 's/^.*) //' /proc/$1/stat | grep -q '^[ZX]'; }
while alive "$runner"; do sleep 0.2; done
[ -r "$file" ] || exit 0
while read -r pid start; do
  [ -n "$pid" ] || continue
  now=$(sed 's/^.*) //' /proc/$pid/stat 2>/dev/null | cut -d' ' -f20)
  [ -n "$now" ] && { [ -z "$start" ] || [ "$now" = "$start" ]; } && kill -9 "$pid" 2>/dev/null
done < "$file"
`

const startFence = (file: string, waitFor: number) =>
  Effect.sync(() => {
    const child = spawn("/bin/sh", ["-c", fenceScript, "microagent-fence", String(waitFor), file], {
      detached: true,
      stdio: "ignore"
    })
    child.unref()
  })

const writeFence = (file: string, workspaces: ReadonlyArray<Workspace>) =>
  Effect.sync(() => {
    const lines = workspaces
      .filter((workspace) => workspace.restart === "always" && isLive(workspace.state))
      .flatMap((workspace) => Option.toArray(vmHandleOf(workspace)))
      .map((handle) => `${handle.pid} ${handle.pidStartTime ?? ""}\n`)
    NodeFs.writeFileSync(`${file}.tmp`, lines.join(""), { mode: 0o600 })
    NodeFs.renameSync(`${file}.tmp`, file)
  })

/** The local runtime's failures as they are; the transport's (the runtime went away) as `Transient`. */
const localFailure = classified(
  "the runner's runtime did not answer",
  "retry: the runner starts its host's runtime again, which picks the VMs up"
)

const makeHost = (options: RunnerOptions, fenceFile: string) =>
  Effect.gen(function*() {
    const local = yield* MicroagentClient
    const directory = yield* Directory
    const fallbackCpus = yield* placementDefaultCpus
    const gate = yield* Effect.makeSemaphore(1)
    const reserved = yield* Ref.make<Resources>({ memoryMiB: 0, cpus: 0, workspaces: 0 })
    const capacity = measuredCapacity(
      options.capacity,
      Math.floor(NodeOs.totalmem() / 1048576),
      NodeOs.availableParallelism()
    )
    const id = options.runnerId

    const status: Effect.Effect<
      RunnerStatus & { readonly workspaces: ReadonlyArray<Workspace> },
      MicroagentError
    > = Effect.gen(function*() {
      const workspaces = yield* local.list({})
      const images = yield* local.imageList().pipe(
        Effect.map(({ images }) => images.flatMap((image) => [image.ref, image.digest])),
        Effect.orElseSucceed(() => [])
      )
      return { id, capacity, load: loadOf(workspaces), images, workspaces }
    }).pipe(Effect.mapError(localFailure))

    /** Admits a workspace of `demand` if the declared capacity has room for it, counting admissions in flight. */
    const admitted = <A, E, R>(
      demand: { readonly memoryMiB: number; readonly cpus: number },
      effect: Effect.Effect<A, E, R>
    ) => {
      const claim = { ...demand, workspaces: 1 }
      const add = (sign: number) =>
        Ref.update(reserved, (held) => ({
          memoryMiB: held.memoryMiB + sign * claim.memoryMiB,
          cpus: held.cpus + sign * claim.cpus,
          workspaces: held.workspaces + sign
        }))
      const admit = gate.withPermits(1)(Effect.gen(function*() {
        const now = yield* status
        const held = yield* Ref.get(reserved)
        const candidate: Candidate = {
          id,
          alive: true,
          labels: options.labels,
          capacity,
          load: {
            memoryMiB: now.load.memoryMiB + held.memoryMiB,
            cpus: now.load.cpus + held.cpus,
            workspaces: now.load.workspaces + held.workspaces
          },
          images: []
        }
        const why = refusal(candidate, { ...demand, image: "", constraints: {} })
        if (why !== undefined) {
          return yield* Effect.fail(
            new ResourceExhausted({
              message: `runner ${id} refused the workspace: ${why}`,
              remediation: "another runner may have room; raise --capacity or free workspaces"
            })
          )
        }
        yield* add(1)
      }))
      return Effect.acquireUseRelease(admit, () => effect, () => add(-1))
    }

    /** Claims `name` for this runner; a name the directory already gives this runner (a move) is fine. */
    const claimHere = (name: string, restart: string, request?: unknown) =>
      directory.claim({ name, host: id, restart, ...(request === undefined ? {} : { request }) }).pipe(
        Effect.catchTag("Conflict", (conflict) =>
          Effect.flatMap(
            directory.lookup(name),
            (entry) => Option.isSome(entry) && entry.value.host === id ? Effect.void : Effect.fail(conflict)
          ))
      )

    /** Gives the name back unless this store holds the workspace after all. */
    const releaseUnlessHeld = (name: string) =>
      local.inspect({ name }).pipe(
        Effect.matchEffect({
          onSuccess: () => Effect.void,
          onFailure: (error) => (error._tag === "NotFound" ? directory.release(name, id) : Effect.void)
        }),
        Effect.ignore
      )

    const create = (payload: CreateRequest) =>
      Effect.gen(function*() {
        const name = payload.name ?? `ws-${randomSuffix()}`
        yield* claimHere(name, payload.restart ?? "never", encodeCreate({ ...payload, name }))
        // A failed or interrupted create (the client went away) gives the name back.
        return yield* admitted(demandOf(payload, fallbackCpus), local.create({ ...payload, name })).pipe(
          Effect.map((workspace) => new Workspace({ ...workspace, host: id })),
          Effect.onExit((exit) => (Exit.isSuccess(exit) ? Effect.void : releaseUnlessHeld(name)))
        )
      }).pipe(Effect.mapError(localFailure))

    const run = (payload: RunRequest) =>
      Effect.gen(function*() {
        const name = payload.name ?? `${payload.namePrefix ?? "run"}-${randomSuffix()}`
        yield* claimHere(name, "never")
        const result = yield* admitted(demandOf(payload, fallbackCpus), local.run({ ...payload, name })).pipe(
          Effect.onExit(() => releaseUnlessHeld(name))
        )
        return result
      }).pipe(Effect.mapError(localFailure))

    /**
     * A copy of a workspace this runner holds (`clone`, `createFromSnapshot`, `fork`): its names are
     * claimed first, with the source's restart policy, and given back unless the copy made them.
     */
    const copied = <A>(
      source: Either.Either<string, InvalidInput>,
      names: ReadonlyArray<string>,
      making: Effect.Effect<A, unknown>
    ) =>
      Effect.gen(function*() {
        const entry = yield* directory.lookup(yield* source)
        const restart = Option.match(entry, { onNone: () => "never", onSome: (e) => e.restart })
        const claimed: Array<string> = []
        return yield* Effect.forEach(
          names,
          (name) => claimHere(name, restart).pipe(Effect.tap(() => claimed.push(name))),
          { discard: true }
        ).pipe(
          Effect.zipRight(making),
          Effect.onExit((exit) =>
            Exit.isSuccess(exit)
              ? Effect.void
              : Effect.forEach(claimed, releaseUnlessHeld, { discard: true })
          )
        )
      }).pipe(Effect.mapError(localFailure))

    const withHost = (workspace: Workspace) => new Workspace({ ...workspace, host: id })

    const clone = (payload: CloneRequest) =>
      copied(
        Either.right(payload.source),
        [payload.target],
        Effect.map(local.clone(payload), (copy) => ({ ...copy, workspace: withHost(copy.workspace) }))
      )

    const createFromSnapshot = (payload: CreateFromSnapshotRequest) =>
      copied(
        Either.map(parseSnapshotRef(payload.snapshot), (ref) => ref.workspace),
        [payload.name],
        Effect.map(
          local.createFromSnapshot(payload),
          (copy) => ({ ...copy, workspace: withHost(copy.workspace) })
        )
      )

    const fork = (payload: ForkRequest) =>
      copied(
        Either.right(payload.name),
        forkChildNames(payload.name, payload),
        local.fork(payload).pipe(
          Effect.tap(refreshFence),
          Effect.map((result) => ({ ...result, children: result.children.map(withHost) }))
        )
      )

    const staging = NodePath.join(options.root, "cluster", "transfers")

    const cpIn = (payload: { readonly name: string; readonly guestPath: string; readonly tar: Uint8Array }) =>
      Effect.scoped(Effect.gen(function*() {
        if (payload.tar.byteLength > maxTransferBytes) {
          return yield* Effect.fail(
            new InvalidInput({ message: `a copy is limited to ${maxTransferBytes} bytes` })
          )
        }
        const source = yield* unpack(staging, payload.tar)
        const result = yield* local.cp({
          name: payload.name,
          direction: "in",
          hostPath: source,
          guestPath: payload.guestPath
        })
        return result
      })).pipe(Effect.mapError(localFailure))

    /** A copy out by value (`cpOut`, `artifactsOut`): made into a staging directory, answered as a tar. */
    const staged = <A, E>(copy: (hostPath: string) => Effect.Effect<A, E>) =>
      Effect.scoped(Effect.gen(function*() {
        const dir = yield* stagingDir(staging)
        const result = yield* copy(NodePath.join(dir, "payload"))
        const tar = yield* packStaged(dir, maxTransferBytes)
        return { result, tar }
      })).pipe(Effect.mapError(localFailure))

    const cpOut = (payload: { readonly name: string; readonly guestPath: string }) =>
      staged((hostPath) =>
        local.cp({ name: payload.name, direction: "out", hostPath, guestPath: payload.guestPath })
      )

    const artifactsOut = (payload: { readonly name: string; readonly artifact: string }) =>
      staged((hostPath) => local.artifactsGet({ name: payload.name, artifact: payload.artifact, hostPath }))

    const forwarded: Record<string, (envelope: { readonly payload: any }) => unknown> = {}
    for (const tag of [...routedTags, ...everywhereTags]) {
      const call = (local as unknown as Record<string, (payload: unknown) => unknown>)[tag]!
      forwarded[tag] = ({ payload }) => {
        const result = call(payload)
        return Effect.isEffect(result)
          ? Effect.mapError(result as Effect.Effect<unknown, unknown>, localFailure)
          : Stream.mapError(result as Stream.Stream<unknown, unknown>, localFailure)
      }
    }

    /** The fence file lists a VM the moment its start returns, not at the next heartbeat. */
    const refreshFence = Effect.flatMap(local.list({}), (workspaces) => writeFence(fenceFile, workspaces))
      .pipe(
        Effect.ignore
      )

    const handlers = {
      ...forwarded,
      start: ({ payload }: { readonly payload: StartRequest }) =>
        local.start(payload).pipe(
          Effect.tap((workspace) => (workspace.restart === "always" ? refreshFence : Effect.void)),
          Effect.map((workspace) => new Workspace({ ...workspace, host: id })),
          Effect.mapError(localFailure)
        ),
      create: ({ payload }: { readonly payload: CreateRequest }) => create(payload),
      run: ({ payload }: { readonly payload: RunRequest }) => run(payload),
      list: ({ payload }: { readonly payload: { readonly runningOnly?: boolean } }) =>
        local.list(payload).pipe(
          Effect.map((workspaces) =>
            workspaces.map((workspace) => new Workspace({ ...workspace, host: id }))
          ),
          Effect.mapError(localFailure)
        ),
      inspect: ({ payload }: { readonly payload: { readonly name: string } }) =>
        local.inspect(payload).pipe(
          Effect.map((found) => ({ ...found, workspace: new Workspace({ ...found.workspace, host: id }) })),
          Effect.mapError(localFailure)
        ),
      delete: (
        { payload }: {
          readonly payload: { readonly name: string; readonly force?: boolean; readonly yes?: boolean }
        }
      ) =>
        local.delete(payload).pipe(
          Effect.tap(() => directory.release(payload.name, id)),
          Effect.mapError(localFailure)
        ),
      cpIn: (
        { payload }: {
          readonly payload: { readonly name: string; readonly guestPath: string; readonly tar: Uint8Array }
        }
      ) => cpIn(payload),
      clone: ({ payload }: { readonly payload: CloneRequest }) => clone(payload),
      createFromSnapshot: ({ payload }: { readonly payload: CreateFromSnapshotRequest }) =>
        createFromSnapshot(payload),
      fork: ({ payload }: { readonly payload: ForkRequest }) => fork(payload),
      artifactsOut: (
        { payload }: { readonly payload: { readonly name: string; readonly artifact: string } }
      ) => artifactsOut(payload),
      cpOut: ({ payload }: { readonly payload: { readonly name: string; readonly guestPath: string } }) =>
        cpOut(payload),
      status: () =>
        Effect.map(status, (now): RunnerStatus => ({
          id: now.id,
          capacity: now.capacity,
          load: now.load,
          images: now.images
        }))
    }

    /** One heartbeat: the directory learns the load, the fence file the movable VMs. */
    const beat = Effect.gen(function*() {
      const now = yield* status
      yield* writeFence(fenceFile, now.workspaces)
      yield* directory.heartbeat({
        id,
        address: `${options.advertise.host}:${options.advertise.port}`,
        labels: options.labels,
        capacity: now.capacity,
        load: now.load,
        images: now.images,
        expiryMs: options.lockExpiryMs
      })
      yield* Effect.forEach(
        now.workspaces,
        (workspace) => directory.remember(workspace.name, id, encodeWorkspace(workspace)),
        {
          discard: true
        }
      )
    })

    return { handlers, beat, status, local, directory, id }
  })

/** Before serving: kill what moved away, adopt what stayed, release what never got here. */
const reconcile = (
  local: MicroagentClientShape,
  directory: typeof Directory.Service,
  id: string
) =>
  Effect.gen(function*() {
    const workspaces = yield* Effect.mapError(local.list({}), localFailure)
    const held = new Set<string>(workspaces.map((workspace) => workspace.name))
    for (const workspace of workspaces) {
      const entry = yield* directory.lookup(workspace.name)
      if (Option.isNone(entry)) {
        yield* directory.claim({ name: workspace.name, host: id, restart: workspace.restart }).pipe(
          Effect.ignore
        )
        continue
      }
      if (entry.value.host === id) continue
      if (entry.value.generation > 1) {
        yield* removeMoved(local, workspace.name, entry.value.host)
      } else {
        yield* Effect.logWarning(
          `${workspace.name} is also the name of a workspace on ${entry.value.host}: this one is not reachable through the cluster`
        )
      }
    }
    const entries = yield* directory.entries
    for (const entry of entries) {
      if (entry.host === id && !held.has(entry.name)) yield* directory.release(entry.name, id)
    }
    yield* restartHeld(local, directory, id)
  })

/** A workspace whose name moved to another runner while this one was away or fenced: gone from here. */
const removeMoved = (local: MicroagentClientShape, name: string, host: string) =>
  Effect.gen(function*() {
    yield* Effect.logWarning(`${name} moved to ${host} while this runner was away: removing it here`)
    yield* local.kill({ name, reason: `moved to runner ${host}` }).pipe(Effect.ignore)
    yield* local.delete({ name, force: true }).pipe(Effect.ignore)
  })

/**
 * The `restart: always` workspaces of this host that are not running (re-adopted at the runner's
 * start, or `only` those its fence stopped while it could not reach the database) start again here, if the
 * directory still gives them to it after a touch: from then on the runner reads alive, and a
 * supervisor's move (which needs the runner lost at the moment it writes) fails. One that moved before
 * is removed here instead.
 */
const restartHeld = (
  local: MicroagentClientShape,
  directory: typeof Directory.Service,
  id: string,
  only?: ReadonlySet<string>
) =>
  Effect.gen(function*() {
    const workspaces = yield* Effect.mapError(local.list({}), localFailure)
    const stopped = workspaces.filter((workspace) =>
      workspace.restart === "always" && !isLive(workspace.state) && workspace.state !== "quarantined"
      && (only === undefined || only.has(workspace.name))
    )
    if (stopped.length === 0) return
    yield* directory.touch(id)
    for (const workspace of stopped) {
      const entry = yield* directory.lookup(workspace.name)
      if (Option.isNone(entry)) continue
      if (entry.value.host === id) {
        yield* local.start({ name: workspace.name }).pipe(
          Effect.catchAll((error) =>
            Effect.logWarning(`could not start ${workspace.name} again: ${error.message}`)
          )
        )
      } else if (entry.value.generation > 1) {
        yield* removeMoved(local, workspace.name, entry.value.host)
      }
    }
  })

/**
 * Liveness: every quarter of the lock expiry the runner touches its row, which needs the database
 * only (a runtime slowed by boots must not make its runner read lost). After half the expiry without
 * a touch it kills its movable VMs itself, before anyone may move them; once a touch succeeds again
 * it starts those the directory still gives it (in a fiber of its own, tried again until it went
 * through: boots must not hold the touches up).
 */
const living = (
  host: Effect.Effect.Success<ReturnType<typeof makeHost>>,
  fenceFile: string,
  lockExpiryMs: number
) =>
  Effect.gen(function*() {
    let lastTouch = Date.now()
    let fenced = false
    /** Workspaces the fence stopped wait to start again (those alone); `resuming` while a fiber does it. */
    const fencedNames = new Set<string>()
    let resumePending = false
    let resuming = false
    const resume = restartHeld(host.local, host.directory, host.id, fencedNames).pipe(
      Effect.tap(() => Effect.sync(() => fencedNames.clear())),
      Effect.zipRight(host.beat),
      Effect.as(false),
      Effect.catchAllCause((cause) =>
        Effect.as(
          Effect.logWarning(`could not start the fenced workspaces again: ${Cause.pretty(cause)}`),
          true
        )
      ),
      Effect.flatMap((pending) =>
        Effect.sync(() => {
          resumePending = pending
          resuming = false
        })
      )
    )
    const every = Duration.millis(Math.max(250, Math.floor(lockExpiryMs / 4)))
    yield* Effect.gen(function*() {
      const ok = yield* host.directory.touch(host.id).pipe(
        Effect.timeout(every),
        Effect.as(true),
        Effect.catchAllCause((cause) =>
          Effect.as(Effect.logWarning(`heartbeat failed: ${Cause.pretty(cause)}`), false)
        )
      )
      if (ok) {
        lastTouch = Date.now()
        fenced = false
        if (resumePending && !resuming) {
          resuming = true
          yield* Effect.logInfo("the database answers again: starting the workspaces the fence stopped")
          yield* Effect.fork(resume)
        }
        return
      }
      if (!fenced && Date.now() - lastTouch > lockExpiryMs / 2) {
        fenced = true
        resumePending = true
        yield* Effect.logError(
          "no heartbeat for half the lock expiry: killing this runner's movable workspaces"
        )
        // Named before the fence kills their VMMs, for the start that follows the database's return
        // (bounded: a runtime that does not answer must not hold the fence up).
        const workspaces = yield* host.local.list({}).pipe(
          Effect.timeout(Duration.seconds(1)),
          Effect.orElseSucceed(() => [])
        )
        const movable = workspaces.filter((workspace) =>
          workspace.restart === "always" && isLive(workspace.state)
        )
        for (const workspace of movable) fencedNames.add(workspace.name)
        yield* startFence(fenceFile, 0)
        yield* Effect.forEach(
          movable,
          (workspace) =>
            host.local.kill({ name: workspace.name, reason: "the runner lost the cluster" }).pipe(
              Effect.ignore
            ),
          { discard: true }
        )
      }
    }).pipe(Effect.repeat(Schedule.spaced(every)))
  })

/** The load, cached images, records and fence file, refreshed as often as liveness; slow is harmless. */
const reporting = (host: Effect.Effect.Success<ReturnType<typeof makeHost>>, lockExpiryMs: number) =>
  host.beat.pipe(
    Effect.catchAllCause((cause) =>
      Effect.logWarning(`could not report this runner's load: ${Cause.pretty(cause)}`)
    ),
    Effect.repeat(Schedule.spaced(Duration.millis(Math.max(1000, Math.floor(lockExpiryMs / 4)))))
  )

/** Why a runner could not start, with the remedy: the database, or the address it listens at. */
const cannotStart = (error: unknown, options: RunnerOptions) => {
  const tag = String((error as { _tag?: unknown })._tag ?? "")
  const detail = String((error as { message?: unknown }).message ?? error)
  const listen = options.listen ?? options.advertise
  return tag === "SqlError"
    ? new Transient({
      message: `the runner could not reach the cluster's database: ${detail}`,
      remediation: "check the --cluster URL (user, host, port, database) and that PostgreSQL is up",
      retryAfterMs: 1000
    })
    : tag === "SocketServerError"
    ? new Conflict({
      message: `the runner could not listen at ${listen.host}:${listen.port}: ${detail}`,
      remediation:
        "another process holds that port, or the address is not this host's: choose another --advertise (or --listen)"
    })
    : new Transient({ message: `the runner could not start: ${tag} ${detail}`.trim(), retryAfterMs: 1000 })
}

/** The runner as a layer: build it and it serves until its scope closes. */
export const layer = (options: RunnerOptions): Layer.Layer<never, MicroagentError> => {
  const fenceFile = NodePath.join(options.root, "cluster", "fence")
  const database = layerDatabase(options.url)
  const directory = layerDirectory
  const sharding = layerRunner({
    runnerId: options.runnerId,
    advertise: options.advertise,
    listen: options.listen,
    lockExpiryMs: options.lockExpiryMs
  })
  const serve = Layer.scopedDiscard(Effect.gen(function*() {
    yield* Effect.sync(() => NodeFs.mkdirSync(NodePath.dirname(fenceFile), { recursive: true, mode: 0o700 }))
    const host = yield* makeHost(options, fenceFile)
    // Two runners under one id would both serve its shard group: a live one elsewhere keeps it.
    const address = `${options.advertise.host}:${options.advertise.port}`
    const namesake = (yield* host.directory.runners).find((runner) => runner.id === host.id)
    if (namesake !== undefined && namesake.alive && namesake.address !== address) {
      return yield* Effect.fail(
        new Conflict({
          message: `runner id ${host.id} is in use by a live runner at ${namesake.address}`,
          remediation: "give this runner its own --runner-id, or stop the other one first"
        })
      )
    }
    yield* reconcile(host.local, host.directory, host.id)
    yield* host.beat
    yield* startFence(fenceFile, process.pid)
    yield* Effect.forkScoped(living(host, fenceFile, options.lockExpiryMs))
    yield* Effect.forkScoped(reporting(host, options.lockExpiryMs))
    const entity = MicroagentHost.toLayer(host.handlers as never, { concurrency: "unbounded" })
    const supervisor = Singleton.make(
      "microagent-supervisor",
      supervise(options.lockExpiryMs, options.forgetAfterMs)
    )
    yield* Layer.build(Layer.mergeAll(entity, supervisor) as Layer.Layer<never, never, Sharding | Directory>)
  }))
  return serve.pipe(
    Layer.provide(sharding),
    Layer.provide(directory),
    Layer.provide(MicroagentClient.layerRuntime(options.root)),
    Layer.provide(database),
    Layer.mapError((error) => isMicroagentError(error) ? error : cannotStart(error, options))
  ) as unknown as Layer.Layer<never, MicroagentError>
}

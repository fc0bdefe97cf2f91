/**
 * The RPC server: handlers that are thin calls into the lifecycle programs, each run against the
 * backend of its workspace, served on a private unix socket (0600, in a 0700 directory).
 */
import * as NodeSocketServer from "@effect/platform-node/NodeSocketServer"
import * as SocketServer from "@effect/platform/SocketServer"
import { type Rpc, RpcClient, RpcSerialization, RpcServer } from "@effect/rpc"
import { Duration, Effect, Either, Layer, Stream } from "effect"
import * as NodeFs from "node:fs"
import * as Net from "node:net"
import * as NodePath from "node:path"
import { Conflict, InvalidInput, Permanent, Transient } from "../domain/Errors.ts"
import { parseSnapshotRef } from "../domain/SnapshotRestore.ts"
import { isLive } from "../domain/State.ts"
import { version } from "../domain/Version.ts"
import { type Backend, profiles } from "../domain/Workspace.ts"
import {
  streamWithWorkspaceBackend,
  withBackend,
  withWorkspaceBackend,
  WorkspaceBackends
} from "../layers/backends/WorkspaceBackends.ts"
import { RegistryHttp } from "../layers/registry/Http.ts"
import { Ext4Disks } from "../layers/rootfs/Ext4Resize.ts"
import { apply } from "../programs/Apply.ts"
import { getArtifact, listArtifacts, removeArtifacts } from "../programs/Artifacts.ts"
import { clone, createFromSnapshot } from "../programs/Clone.ts"
import { workspaceCommit } from "../programs/Commit.ts"
import { copyIn, copyOut } from "../programs/Cp.ts"
import { create, type CreateOptions } from "../programs/Create.ts"
import { remove } from "../programs/Delete.ts"
import { egressLog } from "../programs/EgressLog.ts"
import { result } from "../programs/Entrypoint.ts"
import { exec, execStream } from "../programs/Exec.ts"
import { fork } from "../programs/Fork.ts"
import { halt, kill } from "../programs/Halt.ts"
import { type ExecOverrides, execRequestFor } from "../programs/internal/Requests.ts"
import { networkCreate, networkInspect, networkList, networkRemove } from "../programs/Network.ts"
import { events, inspect, logs, wait } from "../programs/Observe.ts"
import { pause, resume } from "../programs/Pause.ts"
import { perfBoot, perfFootprint } from "../programs/Perf.ts"
import { plan } from "../programs/Plan.ts"
import { quarantine } from "../programs/Quarantine.ts"
import { resize, resizePlan } from "../programs/Resize.ts"
import { run } from "../programs/Run.ts"
import { snapshotCreate, snapshotDelete, snapshotList } from "../programs/Snapshot.ts"
import { start } from "../programs/Start.ts"
import { stats } from "../programs/Stats.ts"
import { volumeCreate, volumeInspect, volumeList, volumeRemove, volumeResize } from "../programs/Volume.ts"
import { Home } from "../services/Home.ts"
import { StateStore } from "../services/StateStore.ts"
import type { Volumes } from "../services/Volumes.ts"
import { MicroagentClient, type MicroagentRpcs } from "./Client.ts"
import { makeConnectHandlers } from "./ConnectSessions.ts"
import { makeHostHandlers } from "./HostHandlers.ts"
import { type CreatePayload, Rpcs } from "./Rpcs.ts"

type ExecFieldsOf<P> = P & {
  readonly env?: { readonly [key: string]: string } | undefined
  readonly cwd?: string | undefined
  readonly user?: string | undefined
  readonly timeoutSeconds?: number | undefined
  readonly stdoutLimit?: number | undefined
  readonly stderrLimit?: number | undefined
  readonly stdin?: Uint8Array | undefined
}

const overridesOf = <P>(payload: ExecFieldsOf<P>): ExecOverrides => ({
  env: payload.env,
  cwd: payload.cwd,
  user: payload.user,
  timeoutSeconds: payload.timeoutSeconds,
  stdoutLimit: payload.stdoutLimit,
  stderrLimit: payload.stderrLimit
})

const stdinOf = (bytes: Uint8Array | undefined) => (bytes === undefined ? undefined : Stream.make(bytes))

/** The exec request for a workspace: the image's and the workspace's defaults under the caller's fields. */
const requestFor = (
  payload: ExecFieldsOf<{ readonly name: string; readonly argv: readonly [string, ...Array<string>] }>
) =>
  Effect.map(
    Effect.flatMap(StateStore, (store) => store.get(payload.name)),
    (workspace) => execRequestFor(workspace, payload.argv, overridesOf(payload))
  )

/** The workspace's backend while it exists; the default one (unused) once only its collection is left. */
const withArtifactBackend = <A, E, R>(name: string, effect: Effect.Effect<A, E, R>) =>
  Effect.flatMap(
    Effect.flatMap(StateStore, (store) => store.find(name)),
    (found) => withBackend(found._tag === "Some" ? found.value.backend : undefined, effect)
  )

/** What a create keeps for supervision; a run's payload has none of it. */
type SupervisionField = "restart" | "entrypoint" | "service" | "shell" | "health"

/** A create, a plan of one, or a run's workspace, from its payload: the fields the program takes, named alike. */
const createOptionsOf = (
  p:
    & Omit<typeof CreatePayload.Type, SupervisionField>
    & Partial<Pick<typeof CreatePayload.Type, SupervisionField>>
): CreateOptions => ({
  image: p.image,
  name: p.name,
  profile: p.profile,
  memoryMiB: p.memoryMiB,
  cpus: p.cpus,
  sizeMiB: p.sizeMiB,
  env: p.env,
  hostname: p.hostname,
  network: p.network,
  ports: p.ports,
  networks: p.networks,
  egress: p.egress,
  addressing: p.addressing,
  mounts: p.mounts,
  secrets: p.secrets,
  outputs: p.outputs,
  refuseDevices: p.refuseDevices,
  ttlSeconds: p.ttlSeconds,
  model: p.model,
  restart: p.restart,
  entrypoint: p.entrypoint,
  files: p.files,
  setup: p.setup,
  service: p.service,
  shell: p.shell,
  health: p.health
})

/** The handlers of every procedure; they need the state store and the backends of this process. */
export const RpcHandlers = Rpcs.toLayer(Effect.gen(function*() {
  const context = yield* Effect.context<WorkspaceBackends | StateStore | Home | Volumes>()
  const host = yield* makeHostHandlers
  const local = <A, E>(effect: Effect.Effect<A, E, WorkspaceBackends | StateStore | Home | Volumes>) =>
    Effect.provide(effect, context)
  const localStream = <A, E>(stream: Stream.Stream<A, E, WorkspaceBackends | StateStore | Home | Volumes>) =>
    Stream.provideContext(stream, context)

  return Rpcs.of({
    version: () => Effect.succeed({ version }),
    ...host,
    run: (p) =>
      local(withBackend(
        p.backend,
        run({
          ...createOptionsOf(p),
          command: p.command,
          keep: p.keep,
          bootTimeoutSeconds: p.bootTimeoutSeconds,
          secretValues: p.secretValues,
          receipt: p.receipt,
          namePrefix: p.namePrefix,
          cold: p.cold,
          exec: {
            cwd: p.cwd,
            user: p.user,
            timeoutSeconds: p.timeoutSeconds,
            stdoutLimit: p.stdoutLimit,
            stderrLimit: p.stderrLimit
          },
          stdin: stdinOf(p.stdin)
        })
      )),
    create: (p) => local(withBackend(p.backend, create(createOptionsOf(p)))),
    plan: (p) =>
      local(withBackend(p.backend, plan({ ...createOptionsOf(p), kind: p.kind, command: p.command }))),
    apply: ({ dryRun, name, ...fields }) => local(apply(name, fields, { dryRun })),
    start: (p) =>
      local(withWorkspaceBackend(
        p.name,
        start(p.name, {
          bootTimeoutSeconds: p.bootTimeoutSeconds,
          secrets: p.secrets,
          secretValues: p.secretValues,
          profile: p.profile,
          memoryMiB: p.memoryMiB,
          cpus: p.cpus,
          ttlSeconds: p.ttlSeconds,
          fromSnapshot: p.fromSnapshot,
          cold: p.cold
        })
      )),
    exec: (p) =>
      local(withWorkspaceBackend(
        p.name,
        Effect.flatMap(requestFor(p), (request) => exec(p.name, request, stdinOf(p.stdin)))
      )),
    execStream: (p) =>
      localStream(streamWithWorkspaceBackend(
        p.name,
        Stream.unwrap(Effect.map(requestFor(p), (request) => execStream(p.name, request, stdinOf(p.stdin))))
      )),
    halt: (p) =>
      local(
        withWorkspaceBackend(p.name, halt(p.name, { timeoutSeconds: p.timeoutSeconds, reason: p.reason }))
      ),
    kill: (p) => local(withWorkspaceBackend(p.name, kill(p.name, { reason: p.reason }))),
    pause: (p) => local(withWorkspaceBackend(p.name, pause(p.name, { reason: p.reason }))),
    quarantine: (p) =>
      local(withWorkspaceBackend(p.name, quarantine(p.name, { reason: p.reason, capture: p.capture }))),
    resume: (p) => local(withWorkspaceBackend(p.name, resume(p.name, { reason: p.reason }))),
    snapshotCreate: (p) =>
      local(withWorkspaceBackend(
        p.name,
        snapshotCreate(p.name, { tag: p.tag, forensic: p.forensic, secretValues: p.secretValues })
      )),
    workspaceCommit: (p) =>
      local(withWorkspaceBackend(
        p.name,
        Effect.flatMap(Home, (home) =>
          workspaceCommit(p.name, p.ref, {
            push: p.push,
            diff: p.diff,
            message: p.message,
            author: p.author,
            insecureRegistry: p.insecureRegistry
          }).pipe(Effect.provide(RegistryHttp.layer(home.root))))
      )),
    clone: (p) => local(withWorkspaceBackend(p.source, clone(p.source, p.target))),
    fork: (p) =>
      local(withWorkspaceBackend(
        p.name,
        fork(p.name, { count: p.count, namePrefix: p.namePrefix, secretValues: p.secretValues })
      )),
    createFromSnapshot: (p) =>
      local(
        Either.match(parseSnapshotRef(p.snapshot), {
          onLeft: (error) => Effect.fail(error),
          onRight: (ref) => withWorkspaceBackend(ref.workspace, createFromSnapshot(p.name, p.snapshot))
        })
      ),
    snapshotList: (p) => local(withWorkspaceBackend(p.name, snapshotList(p.name))),
    snapshotDelete: (p) => local(withWorkspaceBackend(p.name, snapshotDelete(p.name, p.tag))),
    delete: (p) =>
      local(
        withWorkspaceBackend(p.name, remove(p.name, { yes: p.yes, force: p.force })).pipe(
          // Deleting what is not there is not an error: delete is idempotent.
          Effect.catchTag("NotFound", () => Effect.succeed({ workspace: p.name, deleted: false }))
        )
      ),
    inspect: (p) => local(withWorkspaceBackend(p.name, inspect(p.name))),
    list: (p) =>
      local(Effect.gen(function*() {
        const all = yield* Effect.flatMap(StateStore, (store) => store.list)
        // Each workspace is reconciled against its own backend; one this build lacks is reported as recorded.
        const found = yield* Effect.forEach(all, (workspace) =>
          withBackend(workspace.backend, inspect(workspace.name)).pipe(
            Effect.map((report) => [report.workspace]),
            Effect.catchTag("NotFound", () =>
              Effect.succeed([])),
            Effect.catchTag("Unsupported", () => Effect.succeed([workspace]))
          ))
        return found.flat().filter((workspace) =>
          !p.runningOnly || isLive(workspace.state)
        )
      })),
    logs: (p) => localStream(streamWithWorkspaceBackend(p.name, logs(p.name, { follow: p.follow ?? false }))),
    egress: (p) =>
      localStream(streamWithWorkspaceBackend(p.name, egressLog(p.name, { follow: p.follow ?? false }))),
    events: (p) =>
      localStream(streamWithWorkspaceBackend(p.name, events(p.name, { follow: p.follow ?? false }))),
    wait: (p) =>
      local(withWorkspaceBackend(
        p.name,
        wait(p.name, {
          ...(p.timeoutSeconds === undefined ? {} : { timeout: Duration.seconds(p.timeoutSeconds) }),
          ...(p.intervalSeconds === undefined ? {} : { interval: Duration.seconds(p.intervalSeconds) })
        })
      )),
    result: (p) =>
      local(withWorkspaceBackend(p.name, result(p.name, { wait: p.wait, timeoutSeconds: p.timeoutSeconds }))),
    profiles: () => Effect.succeed({ profiles }),
    // Holders are checked against the default backend (the runtime reconciles every backend anyway).
    volumeCreate: (p) => local(withBackend(undefined, volumeCreate(p.name, p.sizeMiB))),
    volumeList: () => local(withBackend(undefined, volumeList())),
    volumeInspect: (p) => local(withBackend(undefined, volumeInspect(p.name))),
    volumeRemove: (p) => local(withBackend(undefined, volumeRemove(p.name, { force: p.force }))),
    volumeResize: (p) => local(withBackend(undefined, volumeResize(p.name, p.sizeMiB))),
    networkCreate: (p) => local(withBackend(undefined, networkCreate(p.name, p.subnet))),
    networkList: () => local(withBackend(undefined, networkList())),
    networkInspect: (p) => local(withBackend(undefined, networkInspect(p.name))),
    networkRemove: (p) => local(withBackend(undefined, networkRemove(p.name, { force: p.force ?? false }))),
    cp: (p) =>
      local(withWorkspaceBackend(
        p.name,
        p.direction === "in"
          ? copyIn(p.name, p.hostPath, p.guestPath)
          : copyOut(p.name, p.guestPath, p.hostPath)
      )),
    artifactsList: (p) => local(listArtifacts(p.name)),
    // A collection outlives its workspace, so only a live one needs its backend.
    artifactsGet: (p) => local(withArtifactBackend(p.name, getArtifact(p.name, p.artifact, p.hostPath))),
    artifactsRemove: (p) => local(removeArtifacts(p.name)),
    ...makeConnectHandlers(localStream),
    stats: (p) =>
      local(withWorkspaceBackend(
        p.name,
        stats(
          p.name,
          p.intervalSeconds === undefined ? {} : { interval: Duration.seconds(p.intervalSeconds) }
        )
      )),
    resize: (p) =>
      local(withWorkspaceBackend(
        p.name,
        p.preview === true
          ? Effect.map(resizePlan(p.name, p.sizeMiB), (plan) => ({
            workspace: p.name,
            from_size_mib: plan.fromMiB,
            to_size_mib: p.sizeMiB
          }))
          : Effect.provide(resize(p.name, p.sizeMiB), Ext4Disks)
      )),
    perfBoot: (p) => local(withBackend(p.backend, perfBoot(p))),
    perfFootprint: (p) =>
      local(
        p.name === undefined
          ? withBackend(undefined, perfFootprint())
          : withWorkspaceBackend(p.name, perfFootprint(p.name))
      )
  })
}))

/** Whether something answers on a unix socket path. */
const answers = (path: string) =>
  Effect.async<boolean>((resume) => {
    const socket = Net.connect({ path })
    socket.once("connect", () => {
      socket.destroy()
      resume(Effect.succeed(true))
    })
    socket.once("error", () => resume(Effect.succeed(false)))
  })

/** A filesystem step of setting up the socket; failing it is `Permanent`, naming what failed. */
const fsStep = <A>(what: string, step: () => A) =>
  Effect.try({
    try: step,
    catch: (cause) =>
      new Permanent({
        message: `cannot ${what}: ${cause instanceof Error ? cause.message : String(cause)}`,
        remediation: "check the directory's owner and permissions, or pick another --socket"
      })
  })

/**
 * A socket server on `path`: the directory is made 0700, a stale socket left by a dead server is
 * replaced, a live one is a `Conflict`, and the socket is 0600 and removed when the scope closes.
 */
export const unixSocketServer = (path: string) =>
  Layer.scoped(
    SocketServer.SocketServer,
    Effect.gen(function*() {
      const directory = NodePath.dirname(path)
      yield* fsStep(`create ${directory}`, () => {
        NodeFs.mkdirSync(directory, { recursive: true, mode: 0o700 })
        NodeFs.chmodSync(directory, 0o700)
      })
      const existing = yield* fsStep(
        `examine ${path}`,
        () => NodeFs.lstatSync(path, { throwIfNoEntry: false })
      )
      if (existing !== undefined) {
        if (!existing.isSocket()) {
          return yield* new InvalidInput({
            message: `${path} exists and is not a socket`,
            remediation: "pick another --socket, or remove the file"
          })
        }
        if (yield* answers(path)) {
          return yield* new Conflict({
            message: `a server is already listening on ${path}`,
            remediation: "stop it first, or pick another --socket"
          })
        }
        yield* fsStep(`remove the stale socket ${path}`, () => NodeFs.rmSync(path, { force: true }))
      }
      const server = yield* NodeSocketServer.make({ path }).pipe(
        Effect.mapError((error) =>
          new Permanent({
            message: `cannot listen on ${path}: ${String(error.cause)}`,
            remediation: "check the directory's permissions, or pick another --socket (at most 107 bytes)"
          })
        )
      )
      yield* Effect.addFinalizer(() => Effect.sync(() => NodeFs.rmSync(path, { force: true })))
      // The directory is private already; the socket's own mode makes that hold wherever it lives.
      yield* fsStep(`restrict ${path} to its owner`, () => NodeFs.chmodSync(path, 0o600))
      return server
    })
  )

/** Serves the API on `socket` until the scope closes. */
export const layerServer = (options: { readonly socket: string }) =>
  RpcServer.layer(Rpcs, { disableFatalDefects: true }).pipe(
    Layer.provide(RpcHandlers),
    Layer.provide(RpcServer.layerProtocolSocketServer),
    Layer.provide(unixSocketServer(options.socket)),
    Layer.provide(RpcSerialization.layerNdjson)
  )

/** A lost connection to the server a call was forwarded to: worth a retry. */
const lostUpstream = <E>(error: E) =>
  typeof error === "object" && error !== null && (error as { _tag?: unknown })._tag === "RpcClientError"
    ? new Transient({
      message: `lost the connection to the runtime: ${String((error as { message?: unknown }).message)}`,
      remediation: "retry; the runtime is started again on demand",
      retryAfterMs: 1000
    })
    : error

/**
 * Handlers that forward every procedure to a `MicroagentClient` (the state directory's runtime): a
 * socket of one's own in front of it. New workspaces get `defaultBackend` when the call names none.
 * Interrupting a forwarded call interrupts it upstream.
 */
export const forwardingHandlers = (
  options: { readonly defaultBackend: Backend }
): Layer.Layer<Rpc.ToHandler<MicroagentRpcs>, never, MicroagentClient> =>
  Rpcs.toLayer(Effect.map(MicroagentClient, (client) => {
    const calls = client as unknown as Record<string, (payload: unknown) => unknown>
    const handlers: Record<string, (payload: unknown) => unknown> = {}
    for (const tag of Rpcs.requests.keys()) {
      handlers[tag] = (payload) => {
        const withBackend = tag === "create" || tag === "run"
          ? { backend: options.defaultBackend, ...(payload as object) }
          : payload
        const result = calls[tag]!(withBackend)
        return Effect.isEffect(result)
          ? Effect.mapError(result, lostUpstream)
          : Stream.mapError(result as Stream.Stream<unknown, unknown>, lostUpstream)
      }
    }
    return handlers as unknown as Parameters<typeof Rpcs.of>[0]
  })) as Layer.Layer<Rpc.ToHandler<MicroagentRpcs>, never, MicroagentClient>

/** Serves the API on `socket`, forwarding every call to a `MicroagentClient`, until the scope closes. */
export const layerForwardingServer = (
  options: { readonly socket: string; readonly defaultBackend: Backend }
) =>
  RpcServer.layer(Rpcs, { disableFatalDefects: true }).pipe(
    Layer.provide(forwardingHandlers(options)),
    Layer.provide(RpcServer.layerProtocolSocketServer),
    Layer.provide(unixSocketServer(options.socket)),
    Layer.provide(RpcSerialization.layerNdjson)
  )

/**
 * A client that calls the handlers in this process, without a socket or serialization: what the MCP
 * server uses until it talks to a runtime process. A defect fails only the call that raised it.
 */
export const makeInProcessClient = Effect.gen(function*() {
  let client!: Effect.Effect.Success<ReturnType<typeof RpcClient.makeNoSerialization<MicroagentRpcs, never>>>
  const server = yield* RpcServer.makeNoSerialization(Rpcs, {
    disableFatalDefects: true,
    onFromServer: (response) => client.write(response)
  })
  client = yield* RpcClient.makeNoSerialization(Rpcs, {
    supportsAck: true,
    onFromClient: ({ message }) => server.write(0, message)
  })
  return client.client
})

export const layerInProcessClient = Layer.scoped(MicroagentClient, makeInProcessClient).pipe(
  Layer.provide(RpcHandlers)
)

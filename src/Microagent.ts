/**
 * The whole layer graph of the library in one place. A host application, the CLI, the runtime and the
 * tests all build their services here rather than wiring the state directory, its database, the store
 * and the backends by hand.
 *
 * - `layer({ home, backend })`: everything the programs need, on one default backend (built once);
 *   workspaces made on another backend are reached through `WorkspaceBackends`.
 * - `layerTest({ home })`: the same on the fake backend, in a temporary state directory (or `home`) whose
 *   fake VMMs are ended, and which is removed, when the layer's scope closes.
 * - `layerStore` and `layerBackends`: the parts, for processes that choose a backend per request.
 */
import type { SqlClient } from "@effect/sql"
import { Effect, Layer } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import type { Permanent, ResourceExhausted, Unsupported } from "./domain/Errors.ts"
import type { Backend } from "./domain/Workspace.ts"
import { type BackendServices, defaultBackend } from "./layers/backends/Backends.ts"
import { WorkspaceBackends } from "./layers/backends/WorkspaceBackends.ts"
import { type HostServices } from "./layers/host/HostServices.ts"
import * as HostServicesLive from "./layers/host/HostServices.ts"
import { endGroups } from "./layers/hypervisor/fake/FakeGuestProcesses.ts"
import { endVmm, vmmsOf } from "./layers/process/Vmms.ts"
import * as Database from "./layers/state/Database.ts"
import * as SqliteStateStore from "./layers/state/SqliteStateStore.ts"
import * as VolumesLive from "./layers/volume/VolumesLive.ts"
import { Home } from "./services/Home.ts"
import type { StateStore } from "./services/StateStore.ts"
import type { Volumes } from "./services/Volumes.ts"

export type { BackendServices } from "./layers/backends/Backends.ts"
export { defaultBackend } from "./layers/backends/Backends.ts"
export {
  streamWithWorkspaceBackend,
  withBackend,
  withWorkspaceBackend,
  WorkspaceBackends
} from "./layers/backends/WorkspaceBackends.ts"

export type { HostServices } from "./layers/host/HostServices.ts"

/**
 * The state directory and what lives in it (its database, the workspace store, the named volumes), and
 * the host's services the programs use beside them (processes, fault points).
 */
export type StoreServices = Home | SqlClient.SqlClient | StateStore | Volumes | HostServices

/** What `layer` provides: the store, every backend on demand, and the default backend's services. */
export type Services = StoreServices | WorkspaceBackends | BackendServices

export interface StoreOptions {
  /** The state directory; default `$MICROAGENT_HOME`, else `~/.microagent`. */
  readonly home?: string | undefined
}

export interface Options extends StoreOptions {
  /** The backend of new workspaces; default `$MICROAGENT_BACKEND`, else `qemu`. */
  readonly backend?: Backend | undefined
}

/** The state directory, its database (checked and migrated on open), the store, the volumes, the host's services. */
export const layerStore = (
  options: StoreOptions = {}
): Layer.Layer<StoreServices, Permanent | ResourceExhausted> =>
  Layer.mergeAll(SqliteStateStore.layer, VolumesLive.layer, HostServicesLive.layer).pipe(
    Layer.provideMerge(Database.layer),
    Layer.provideMerge(Home.layer(Home.resolveRoot(options.home)))
  )

/** The store and `WorkspaceBackends`: each backend is built the first time a workspace needs it. */
export const layerBackends = (
  options: Options = {}
): Layer.Layer<StoreServices | WorkspaceBackends, Permanent | ResourceExhausted> =>
  WorkspaceBackends.layer({ defaultBackend: options.backend ?? defaultBackend() }).pipe(
    Layer.provideMerge(layerStore(options))
  )

/** The default backend's services, as `WorkspaceBackends` built them (so they are built once). */
const defaultBackendServices: Layer.Layer<BackendServices, Unsupported, WorkspaceBackends> = Layer
  .effectContext(
    Effect.flatMap(WorkspaceBackends, (backends) => backends.services(backends.defaultBackend))
  )

/** Everything the programs need: the store, `WorkspaceBackends`, and the default backend's services. */
export const layer = (
  options: Options = {}
): Layer.Layer<Services, Permanent | ResourceExhausted | Unsupported> =>
  defaultBackendServices.pipe(Layer.provideMerge(layerBackends(options)))

/** Ends the fake VMMs of a state directory: they are detached processes that outlive their parent. */
const endVmms = (root: string) => Effect.forEach(vmmsOf(root), endVmm, { discard: true })

/**
 * Ends what the fake guests of a state directory left running (an entrypoint, a service's
 * supervisor): their VMMs' ends do it only through a halt or kill, which a failed test may never reach.
 */
const endFakeGuests = (root: string) =>
  Effect.sync(() => {
    const workspaces = NodePath.join(root, "workspaces")
    const names = NodeFs.existsSync(workspaces) ? NodeFs.readdirSync(workspaces) : []
    for (const name of names) endGroups(NodePath.join(workspaces, name, "rootfs"))
  })

/**
 * `layer` on the fake backend, for tests: a fresh temporary state directory unless `home` names one.
 * When the scope closes, every fake VMM of the directory is ended with what its guest left running,
 * and a temporary directory removed.
 */
export const layerTest = (
  options: StoreOptions = {}
): Layer.Layer<Services, Permanent | ResourceExhausted | Unsupported> =>
  Layer.unwrapScoped(Effect.gen(function*() {
    const root = options.home ?? (yield* Effect.acquireRelease(
      Effect.sync(() => NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-test-"))),
      (dir) => Effect.sync(() => NodeFs.rmSync(dir, { recursive: true, force: true }))
    ))
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => Effect.zipRight(endFakeGuests(root), endVmms(root)))
    )
    return layer({ home: root, backend: "fake" })
  }))

/**
 * microagent for Effect applications: `Microagent` builds the layers; the programs run workspaces
 * against the service tags. Modules are also importable one by one (`microagent/programs/Exec`,
 * `microagent/domain/Errors`, `microagent/services/StateStore`, `microagent/rpc/Client`, …); the Promise
 * API is `microagent/promise`.
 */
export * as Microagent from "./Microagent.ts"

export {
  Conflict,
  InvalidInput,
  MicroagentError,
  NotFound,
  Permanent,
  PolicyDenied,
  ResourceExhausted,
  Transient,
  Unsupported
} from "./domain/Errors.ts"
export { ExecRequest, ExecResult } from "./domain/Exec.ts"
export type { ExecOutput } from "./domain/Exec.ts"
export { PlanImage, PlanKernel, planText, RunPlan } from "./domain/Plan.ts"
export { EntrypointResult, HealthCheck, ServiceStatus, Workspace } from "./domain/Workspace.ts"
export { defaultImage } from "./layers/image/BuiltinImages.ts"

export { SnapshotDeleted, SnapshotManifest, WorkspaceCopy } from "./domain/Snapshot.ts"
export { clone, createFromSnapshot } from "./programs/Clone.ts"
export { type CommitOptions, CommitResult, workspaceCommit } from "./programs/Commit.ts"
export { copyIn, copyOut } from "./programs/Cp.ts"
export { create } from "./programs/Create.ts"
export { remove } from "./programs/Delete.ts"
export { result } from "./programs/Entrypoint.ts"
export { exec, execStream } from "./programs/Exec.ts"
export { fork, type ForkOptions, ForkResult } from "./programs/Fork.ts"
export { halt, kill } from "./programs/Halt.ts"
export { imagePush, PushResult, registryList, registryLogin, registryLogout } from "./programs/Image.ts"
export { init, type InitOptions, InitProvider, InitResult } from "./programs/Init.ts"
export { execRequestFor } from "./programs/internal/Requests.ts"
export { networkCreate, networkInspect, networkList, networkRemove } from "./programs/Network.ts"
export { events, inspect, list, logs, wait } from "./programs/Observe.ts"
export { plan, type PlanOptions } from "./programs/Plan.ts"
export { resize } from "./programs/Resize.ts"
export { run } from "./programs/Run.ts"
export { snapshotCreate, snapshotDelete, snapshotList } from "./programs/Snapshot.ts"
export { start } from "./programs/Start.ts"
export { stats } from "./programs/Stats.ts"
export {
  supervise,
  type SuperviseOptions,
  type SuperviseReport,
  type SuperviseStart,
  superviseWith
} from "./programs/Supervise.ts"
export { volumeCreate, volumeInspect, volumeList, volumeRemove, volumeResize } from "./programs/Volume.ts"

export { ResizeResult, WorkspaceStats } from "./domain/Usage.ts"
export { Ext4Disks } from "./layers/rootfs/Ext4Resize.ts"
export { MicroagentClient } from "./rpc/Client.ts"
export { Disks } from "./services/Disks.ts"
export { GuestChannel } from "./services/GuestChannel.ts"
export { Home } from "./services/Home.ts"
export { Hypervisor } from "./services/Hypervisor.ts"
export { ImageStore } from "./services/ImageStore.ts"
export { KernelCache } from "./services/KernelCache.ts"
export { Networks } from "./services/Networks.ts"
export { StateStore } from "./services/StateStore.ts"
export { Volumes } from "./services/Volumes.ts"

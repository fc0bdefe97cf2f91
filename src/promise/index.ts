/**
 * The Promise API of microagent (`microagent/promise`): workspaces for applications that do not use
 * Effect, over the same programs as the Effect API.
 */
export type { CommitOptions, CommitResult } from "../programs/Commit.ts"
export type { SuperviseReport } from "../programs/Supervise.ts"
export type { RunnerRecord, ServeOptions } from "../services/ModelRunners.ts"
export type { ModelRecord, PruneResult as ModelPruneResult } from "../services/Models.ts"
export { Cluster } from "./Cluster.ts"
export { Host, type HostOptions } from "./Host.ts"
export { init, type InitOptions, type InitResult } from "./Init.ts"
export { type ErrorKind, MicroagentError } from "./MicroagentError.ts"
export {
  type CreateOptions,
  type EntrypointResult,
  type ExecOptions,
  type ExecResult,
  type Output,
  type RunPlan,
  Workspace,
  WorkspaceFiles,
  type WorkspaceRecord
} from "./Workspace.ts"

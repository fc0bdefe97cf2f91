/** The RPC handlers of a workspace's lifecycle: run, create, start, exec, halt, pause, delete, copy and resize. */
import { Effect, Stream } from "effect"
import { profiles } from "../domain/Workspace.ts"
import {
  streamWithWorkspaceBackend,
  withBackend,
  withWorkspaceBackend
} from "../layers/backends/WorkspaceBackends.ts"
import { Ext4Disks } from "../layers/rootfs/Ext4Resize.ts"
import { apply } from "../programs/Apply.ts"
import { copyIn, copyOut } from "../programs/Cp.ts"
import { create, type CreateOptions } from "../programs/Create.ts"
import { remove } from "../programs/Delete.ts"
import { exec, execStream } from "../programs/Exec.ts"
import { halt, kill } from "../programs/Halt.ts"
import { type ExecOverrides, execRequestFor } from "../programs/internal/Requests.ts"
import { pause, resume } from "../programs/Pause.ts"
import { plan } from "../programs/Plan.ts"
import { quarantine } from "../programs/Quarantine.ts"
import { resize, resizePlan } from "../programs/Resize.ts"
import { run } from "../programs/Run.ts"
import { start } from "../programs/Start.ts"
import { StateStore } from "../services/StateStore.ts"
import type { HandlersFor, Local, LocalStream } from "./HandlerContext.ts"
import type { CreatePayload } from "./Rpcs.ts"

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
  brokers: p.brokers,
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

export const makeLifecycleHandlers = (
  local: Local,
  localStream: LocalStream
): HandlersFor<
  | "run"
  | "create"
  | "plan"
  | "apply"
  | "start"
  | "exec"
  | "execStream"
  | "halt"
  | "kill"
  | "pause"
  | "quarantine"
  | "resume"
  | "delete"
  | "profiles"
  | "cp"
  | "resize"
> => ({
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
  delete: (p) =>
    local(
      withWorkspaceBackend(p.name, remove(p.name, { yes: p.yes, force: p.force })).pipe(
        // Deleting what is not there is not an error: delete is idempotent.
        Effect.catchTag("NotFound", () => Effect.succeed({ workspace: p.name, deleted: false }))
      )
    ),
  profiles: () => Effect.succeed({ profiles }),
  cp: (p) =>
    local(withWorkspaceBackend(
      p.name,
      p.direction === "in"
        ? copyIn(p.name, p.hostPath, p.guestPath)
        : copyOut(p.name, p.guestPath, p.hostPath)
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
    ))
})

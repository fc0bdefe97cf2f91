/**
 * The requests of the workspace operations, one Schema each: what `create`, `run`, `exec`, `start`,
 * `halt`, `delete`, `cp`, `snapshotCreate`, `wait` and the others take. The programs' options are their
 * types, the RPC API sends them as they are, the MCP tools name their fields in snake_case, and the CLI
 * builds them from its flags. Names are checked by the programs, which explain what is wrong.
 */
import { Schema } from "effect"
import { AddressingRequest } from "./Addressing.ts"
import { EgressPolicy } from "./Egress.ts"
import { ExecRequest } from "./Exec.ts"
import { FileCopy } from "./FileCopy.ts"
import { ModelMediation } from "./ModelPolicy.ts"
import { SnapshotTag } from "./Snapshot.ts"
import {
  Backend,
  BrokerEndpoint,
  HealthCheck,
  Mount,
  NetworkMode,
  OutputDecl,
  ProfileName,
  PublishedPort,
  RestartPolicy,
  SecretRef
} from "./Workspace.ts"

/** Bytes travel as base64 text, so the wire stays newline-delimited JSON. */
export const Bytes = Schema.Uint8ArrayFromBase64

const PositiveInt = Schema.Int.pipe(Schema.positive())

const Seconds = Schema.Number.pipe(Schema.positive())

const Env = Schema.Record({ key: Schema.String, value: Schema.String })

/**
 * Secret values the caller resolved in its own process (`env:` is the caller's environment), sent in
 * memory over the private socket; `Redacted`, so they never print.
 */
export const SecretValues = Schema.Array(
  Schema.Struct({ name: Schema.String, value: Schema.Redacted(Bytes) })
)
export type SecretValues = typeof SecretValues.Type

/** A model the guest reaches at http://127.0.0.1:11434/v1, and how its requests are mediated. */
export const ModelRequest = Schema.Struct({
  model: Schema.String,
  mediation: Schema.optional(ModelMediation),
  /** For `policy`: the policy file (a host path, read by the runtime). */
  policyFile: Schema.optional(Schema.String)
})
export type ModelRequest = typeof ModelRequest.Type

/** What shapes a new workspace, for `create` and `run` alike. */
export const WorkspaceFields = {
  image: Schema.String,
  name: Schema.optional(Schema.String),
  profile: Schema.optional(ProfileName),
  memoryMiB: Schema.optional(PositiveInt),
  cpus: Schema.optional(PositiveInt),
  sizeMiB: Schema.optional(PositiveInt),
  env: Schema.optional(Env),
  hostname: Schema.optional(Schema.String),
  network: Schema.optional(NetworkMode),
  ports: Schema.optional(Schema.Array(PublishedPort)),
  /** Named networks to join. */
  networks: Schema.optional(Schema.Array(Schema.String)),
  /** Egress mediation of the user network; `broker` when absent. */
  egress: Schema.optional(EgressPolicy),
  /** The guest's own addressing on the user network: ip, subnet, gateway, dns, routes. */
  addressing: Schema.optional(AddressingRequest),
  mounts: Schema.optional(Schema.Array(Mount)),
  /** References only; values are resolved by the caller and sent with each start. */
  secrets: Schema.optional(Schema.Array(SecretRef)),
  /**
   * Credential broker endpoints (`parseBrokers` of the `--broker` texts); their secrets are among
   * `secrets`, with `use: "broker"`.
   */
  brokers: Schema.optional(Schema.Array(BrokerEndpoint)),
  outputs: Schema.optional(Schema.Array(OutputDecl)),
  /** The backend of the new workspace; the server's default when absent. */
  backend: Schema.optional(Backend),
  /** Refuse an image whose layers hold character or block devices (accepted by default). */
  refuseDevices: Schema.optional(Schema.Boolean),
  /** A lease in seconds (0: none): past it `gc` stops the workspace. */
  ttlSeconds: Schema.optional(Schema.Number.pipe(Schema.nonNegative())),
  /**
   * A model the guest reaches at http://127.0.0.1:11434/v1, how its requests are mediated, and for
   * `policy` the policy file (a host path, read by the runtime).
   */
  model: Schema.optional(ModelRequest),
  /**
   * In a cluster: labels the chosen runner must carry (`--constraint backend=qemu`); a single host
   * ignores them.
   */
  constraints: Schema.optional(Schema.Record({ key: Schema.String, value: Schema.String }))
}

/** `create`: a persistent workspace, `prepared` until its first start. */
export const CreateRequest = Schema.Struct({
  ...WorkspaceFields,
  restart: Schema.optional(RestartPolicy),
  /** A shell command each start runs. */
  entrypoint: Schema.optional(Schema.String),
  /** Host files (read by the runtime) copied into the guest at every start, before the entrypoint. */
  files: Schema.optional(Schema.Array(FileCopy)),
  /** Shell commands run once, before the first start's entrypoint. */
  setup: Schema.optional(Schema.Array(Schema.String)),
  /** A shell command the guest keeps running, restarted with back-off. */
  service: Schema.optional(Schema.String),
  /** The absolute guest path of the shell `connect` runs. */
  shell: Schema.optional(Schema.String),
  health: Schema.optional(HealthCheck)
})
export type CreateRequest = typeof CreateRequest.Type

const { argv: _argv, env: _env, tty: _tty, ...guestExecFields } = ExecRequest.fields

/** How a command runs: over the image's and the workspace's defaults (`execRequestFor`). */
export const ExecSettings = Schema.Struct({
  /** Environment variables, over the image's and the workspace's. */
  env: Schema.optional(Env),
  ...guestExecFields
})
export type ExecSettings = typeof ExecSettings.Type

/** `exec` and `execStream`: a command in a running workspace. */
export const ExecCommand = Schema.Struct({
  name: Schema.String,
  /** Executed directly, no shell. */
  argv: ExecRequest.fields.argv,
  ...ExecSettings.fields,
  /** The whole of the command's stdin; closed at once when absent. */
  stdin: Schema.optional(Bytes)
})
export type ExecCommand = typeof ExecCommand.Type

const { env: _runEnv, ...runExecFields } = ExecSettings.fields

/** `run`: a one-shot workspace, booted for one command and deleted (or kept, halted) afterwards. */
export const RunRequest = Schema.Struct({
  ...WorkspaceFields,
  /** The command; the image's Entrypoint and Cmd when empty. */
  command: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  /** Shell commands run in the same boot before the command; a failing one fails the run. */
  setup: Schema.optional(Schema.Array(Schema.String)),
  /** Host files (read by the runtime) copied into the guest before setup and the command. */
  files: Schema.optional(Schema.Array(FileCopy)),
  ...runExecFields,
  /** The whole of the command's stdin; closed at once when absent. */
  stdin: Schema.optional(Bytes),
  /** Keep the workspace (halted) afterwards instead of deleting it. */
  keep: Schema.optional(Schema.Boolean),
  bootTimeoutSeconds: Schema.optional(Seconds),
  /** The values of `secrets`, resolved by the caller; delivered before the command runs. */
  secretValues: Schema.optional(SecretValues),
  /**
   * `dispatch`: stop the VM once the command is done and sum its egress audit log into a receipt (the
   * mediator's record of what it reached and was refused) before the workspace goes.
   */
  receipt: Schema.optional(Schema.Boolean),
  /** Boot even when a warm start (a template restored instead of a boot) is possible. */
  cold: Schema.optional(Schema.Boolean),
  /** A generated name starts with this (default `run`). */
  namePrefix: Schema.optional(Schema.String.pipe(Schema.pattern(/^[a-z][a-z0-9-]{0,15}$/)))
})
export type RunRequest = typeof RunRequest.Type

/** `run`/`create` with `dryRun`: what they would do; nothing is pulled, booted or written. */
export const PlanRequest = Schema.Struct({
  ...CreateRequest.fields,
  kind: Schema.Literal("run", "create"),
  command: Schema.optional(Schema.Array(Schema.String))
})
export type PlanRequest = typeof PlanRequest.Type

/** `apply`: the fields a spec names (absent ones are kept); `dryRun` reports the changes and writes nothing. */
export const ApplyRequest = Schema.Struct({
  name: Schema.String,
  dryRun: Schema.optional(Schema.Boolean),
  image: Schema.optional(Schema.String),
  profile: Schema.optional(ProfileName),
  memoryMiB: Schema.optional(PositiveInt),
  cpus: Schema.optional(PositiveInt),
  sizeMiB: Schema.optional(PositiveInt),
  hostname: Schema.optional(Schema.String),
  restart: Schema.optional(RestartPolicy),
  /** Empty: no entrypoint. */
  entrypoint: Schema.optional(Schema.String),
  env: Schema.optional(Env),
  network: Schema.optional(NetworkMode),
  ports: Schema.optional(Schema.Array(PublishedPort)),
  egress: Schema.optional(EgressPolicy),
  mounts: Schema.optional(Schema.Array(Mount)),
  outputs: Schema.optional(Schema.Array(OutputDecl)),
  files: Schema.optional(Schema.Array(FileCopy)),
  setup: Schema.optional(Schema.Array(Schema.String))
})
export type ApplyRequest = typeof ApplyRequest.Type

/** `start`: boot a workspace from its disk, with overrides for this start only. */
export const StartRequest = Schema.Struct({
  name: Schema.String,
  bootTimeoutSeconds: Schema.optional(Seconds),
  /** References to record before this start, replacing those of the same name. */
  secrets: Schema.optional(Schema.Array(SecretRef)),
  /** The values of every secret the workspace references, resolved by the caller; in memory only. */
  secretValues: Schema.optional(SecretValues),
  /** For this start only (the record keeps its own): a profile's memory and vCPUs, or these. */
  profile: Schema.optional(ProfileName),
  memoryMiB: Schema.optional(PositiveInt),
  cpus: Schema.optional(PositiveInt),
  /** A new lease in seconds, from now (0: none); without it an expired lease refuses the start. */
  ttlSeconds: Schema.optional(Schema.Number.pipe(Schema.nonNegative())),
  /**
   * Roll back to this snapshot (tag) of the workspace first: its disk replaces the workspace's, and a
   * memory snapshot resumes the captured VM instead of booting (see docs/snapshots.md).
   */
  fromSnapshot: Schema.optional(SnapshotTag),
  /** Boot even when a warm start (a template restored instead of a boot) is possible. */
  cold: Schema.optional(Schema.Boolean)
})
export type StartRequest = typeof StartRequest.Type

/** `halt`: a graceful shutdown; the VM is killed if the guest has not powered off in time. */
export const HaltRequest = Schema.Struct({
  name: Schema.String,
  /** Seconds the guest gets to shut down before the VM is killed. */
  timeoutSeconds: Schema.optional(Seconds),
  /** Why: recorded in the workspace's events. */
  reason: Schema.optional(Schema.String)
})
export type HaltRequest = typeof HaltRequest.Type

/** `kill`, `pause` and `resume`: a workspace, and why (recorded in its events). */
export const KillRequest = Schema.Struct({
  name: Schema.String,
  /** Why: recorded in the workspace's events. */
  reason: Schema.optional(Schema.String)
})
export type KillRequest = typeof KillRequest.Type

/** `quarantine`: fence, freeze, capture and stop a running or paused workspace into custody. */
export const QuarantineRequest = Schema.Struct({
  name: Schema.String,
  /** Why: recorded in the events and in the custody manifest. */
  reason: Schema.optional(Schema.String),
  /** Capture memory, device state and disk (default true); false keeps only the logs. */
  capture: Schema.optional(Schema.Boolean)
})
export type QuarantineRequest = typeof QuarantineRequest.Type

/** `delete`: the workspace, its disk and its record; a live one only with `yes` or `force`. */
export const DeleteRequest = Schema.Struct({
  name: Schema.String,
  /** Halt a live workspace first. */
  yes: Schema.optional(Schema.Boolean),
  /** Kill a live workspace first. */
  force: Schema.optional(Schema.Boolean)
})
export type DeleteRequest = typeof DeleteRequest.Type

/**
 * `cp`: copies between a host path and a workspace path, either way; the side that runs the program
 * reads or writes the host path itself.
 */
export const CpRequest = Schema.Struct({
  name: Schema.String,
  direction: Schema.Literal("in", "out"),
  /** Absolute. */
  hostPath: Schema.String,
  guestPath: Schema.String
})
export type CpRequest = typeof CpRequest.Type

/** `snapshotCreate`: memory, device state and disk of a running or paused workspace; the disk of a stopped one. */
export const SnapshotCreateRequest = Schema.Struct({
  name: Schema.String,
  tag: Schema.optional(Schema.String),
  forensic: Schema.optional(Schema.Boolean),
  /** The workspace's secret values: wiped from the guest before the capture, delivered again after. */
  secretValues: Schema.optional(SecretValues)
})
export type SnapshotCreateRequest = typeof SnapshotCreateRequest.Type

/**
 * `workspaceCommit`: a stopped workspace's root filesystem as an image of the store (one squashed layer,
 * or with `diff` the base's layers plus one of the changes), pushed afterwards with `push`.
 */
export const CommitRequest = Schema.Struct({
  name: Schema.String,
  ref: Schema.String,
  push: Schema.optional(Schema.Boolean),
  diff: Schema.optional(Schema.Boolean),
  message: Schema.optional(Schema.String),
  author: Schema.optional(Schema.String),
  insecureRegistry: Schema.optional(Schema.Boolean)
})
export type CommitRequest = typeof CommitRequest.Type

/** `fork`: N running children of a running workspace, each resumed from one memory capture. */
export const ForkRequest = Schema.Struct({
  name: Schema.String,
  count: Schema.optional(Schema.Number),
  namePrefix: Schema.optional(Schema.String),
  /** The workspace's secret values: delivered again to the parent and to every child. */
  secretValues: Schema.optional(SecretValues)
})
export type ForkRequest = typeof ForkRequest.Type

/** The names a fork gives its children: `PREFIX-1` … `PREFIX-N`, the prefix `NAME-fork` by default. */
export const forkChildNames = (
  name: string,
  options: { readonly count?: number | undefined; readonly namePrefix?: string | undefined }
): ReadonlyArray<string> => {
  const prefix = options.namePrefix ?? `${name}-fork`
  return Array.from({ length: options.count ?? 1 }, (_, i) => `${prefix}-${i + 1}`)
}

/** `clone`: a prepared, halted or stopped workspace copied to a new one with its own identity. */
export const CloneRequest = Schema.Struct({ source: Schema.String, target: Schema.String })
export type CloneRequest = typeof CloneRequest.Type

/** `createFromSnapshot`: a new workspace (`name`) whose disk is a snapshot's (`WORKSPACE:TAG`). */
export const CreateFromSnapshotRequest = Schema.Struct({ name: Schema.String, snapshot: Schema.String })
export type CreateFromSnapshotRequest = typeof CreateFromSnapshotRequest.Type

/** `result`: the entrypoint's result of the latest start that ran one. */
export const ResultRequest = Schema.Struct({
  name: Schema.String,
  /** Block until the entrypoint has finished. */
  wait: Schema.optional(Schema.Boolean),
  /** With `wait`: give up after this long (`Transient`). */
  timeoutSeconds: Schema.optional(Seconds)
})
export type ResultRequest = typeof ResultRequest.Type

/** `logs`, `events` and `egress`: what there is, and with `follow` what comes until the workspace stops. */
export const FollowRequest = Schema.Struct({ name: Schema.String, follow: Schema.optional(Schema.Boolean) })
export type FollowRequest = typeof FollowRequest.Type

/** `wait`: block until the workspace settles; running out of time is `Transient`. */
export const WaitRequest = Schema.Struct({
  name: Schema.String,
  timeoutSeconds: Schema.optional(Seconds),
  /** How often the workspace is looked at; 0.25 s when absent. */
  intervalSeconds: Schema.optional(Seconds)
})
export type WaitRequest = typeof WaitRequest.Type

/**
 * Workspaces: names, resource profiles, the persisted record.
 */
import { Config, Schema } from "effect"
import { Addressing } from "./Addressing.ts"
import { BrokerGrant } from "./BrokerGrant.ts"
import { EgressPolicy } from "./Egress.ts"
import { FileCopy } from "./FileCopy.ts"
import { ModelMediation } from "./ModelPolicy.ts"
import { State } from "./State.ts"

/** Names that collide with directories of the state root. */
export const reservedNames: ReadonlyArray<string> = [
  "build",
  "host-workers",
  "images",
  "kernels",
  "models",
  "oci",
  "runners",
  "volumes",
  "workspaces",
  "networks",
  "runtime"
]

const namePattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/

/** Explains why a candidate name is not a workspace name, or undefined when it is one. */
export const nameProblem = (name: string): string | undefined => {
  if (name.length === 0) return "a workspace name cannot be empty"
  if (/[*?[\]]/.test(name)) return `"${name}" looks like an unexpanded shell glob`
  if (name.length > 63) return `"${name}" is longer than 63 characters`
  if (!namePattern.test(name)) {
    return `"${name}" must start with a letter or digit and contain only letters, digits, '.', '_' and '-'`
  }
  if (reservedNames.includes(name)) return `"${name}" is reserved (it names a directory of the state root)`
  return undefined
}

export const WorkspaceName = Schema.String.pipe(
  Schema.filter((s) => nameProblem(s) ?? true, { identifier: "WorkspaceName" }),
  Schema.brand("WorkspaceName")
)
export type WorkspaceName = typeof WorkspaceName.Type

export const ProfileName = Schema.Literal("tiny", "small", "medium", "large")
export type ProfileName = typeof ProfileName.Type

export class Resources extends Schema.Class<Resources>("Resources")({
  memoryMiB: Schema.Int.pipe(Schema.between(64, 1024 * 1024)),
  cpus: Schema.Int.pipe(Schema.between(1, 256)),
  /** Root disk size; undefined means "image content plus headroom". */
  sizeMiB: Schema.optional(Schema.Int.pipe(Schema.between(16, 16 * 1024 * 1024)))
}) {}

export const profiles: Record<ProfileName, { memoryMiB: number; cpus: number; sizeMiB: number }> = {
  tiny: { memoryMiB: 256, cpus: 1, sizeMiB: 512 },
  small: { memoryMiB: 512, cpus: 2, sizeMiB: 1024 },
  medium: { memoryMiB: 2048, cpus: 2, sizeMiB: 8192 },
  large: { memoryMiB: 4096, cpus: 4, sizeMiB: 16384 }
}

export const defaultResources = { memoryMiB: 512, cpus: 2 } as const

/**
 * The vCPUs of a workspace that names neither `--cpus` nor a profile: `MICROAGENT_DEFAULT_CPUS` in the
 * environment (the runtime's, and a cluster runner's or client's for placement), else 2. Under emulation
 * (no KVM) an idle guest of one vCPU costs the host a fifth of what one of two does (docs/kernels.md),
 * which a host running many small workspaces may prefer.
 */
export const defaultCpus = Config.integer("MICROAGENT_DEFAULT_CPUS").pipe(
  Config.validate({
    message: "a whole number of vCPUs from 1 to 256",
    validation: (n) => n >= 1 && n <= 256
  }),
  Config.withDefault(defaultResources.cpus)
)

export const RestartPolicy = Schema.Literal("never", "on-failure", "always")
export const NetworkMode = Schema.Literal("user", "isolated")
export type NetworkMode = typeof NetworkMode.Type

export const Backend = Schema.Literal("qemu", "firecracker", "fake")
export type Backend = typeof Backend.Type

/** What the workspace runs when started without an explicit command. */
export class ImageInfo extends Schema.Class<ImageInfo>("ImageInfo")({
  ref: Schema.String,
  digest: Schema.optional(Schema.String),
  entrypoint: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  cmd: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  env: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  user: Schema.optional(Schema.String),
  workingDir: Schema.optional(Schema.String),
  stopSignal: Schema.optional(Schema.String)
}) {}

/** A published port, `[ip:]hostPort:guestPort[/tcp]`. */
export class PublishedPort extends Schema.Class<PublishedPort>("PublishedPort")({
  hostIp: Schema.String,
  hostPort: Schema.Int.pipe(Schema.between(1, 65535)),
  guestPort: Schema.Int.pipe(Schema.between(1, 65535)),
  protocol: Schema.Literal("tcp")
}) {}

/**
 * A disk attached at a guest path (`-v SOURCE:/path[:ro]`): a named volume, a tar bundle built into a
 * one-shot ext4 disk at every start, or an ext4 image file the user owns, attached as it is.
 */
export class Mount extends Schema.Class<Mount>("Mount")({
  kind: Schema.Literal("volume", "bundle", "image"),
  /** The volume name, or the absolute host path of the bundle or image. */
  source: Schema.String,
  target: Schema.String,
  readOnly: Schema.Boolean
}) {}

/** A secret reference (`NAME=env:VAR`, `file:PATH`, `dotenv:PATH[:KEY]`); never its value. */
export class SecretRef extends Schema.Class<SecretRef>("SecretRef")({
  name: Schema.String,
  source: Schema.String,
  /**
   * `broker`: the value stays on the host, with the credential broker, which swaps it in for
   * `@secret:NAME` in the guest's requests (see Broker.ts); absent: delivered into /run/secrets.
   */
  use: Schema.optional(Schema.Literal("broker"))
}) {}

/**
 * One endpoint of the credential broker (`--broker`, see Broker.ts): the guest's 127.0.0.1:guestPort
 * reaches a host-side forward proxy to `upstream`, which swaps the named secrets in.
 */
export class BrokerEndpoint extends Schema.Class<BrokerEndpoint>("BrokerEndpoint")({
  /** `http(s)://host[:port][/prefix]`: the guest's request path is appended. */
  upstream: Schema.String,
  /** The broker-held secrets (workspace secrets with `use: broker`) this endpoint may swap in. */
  secrets: Schema.Array(Schema.String),
  /** Guest environment variables set to the endpoint's URL, each with an optional path after it. */
  baseUrlEnv: Schema.Array(Schema.Struct({ name: Schema.String, path: Schema.String })),
  /** A PEM bundle trusted for the upstream's TLS, besides the usual roots (absolute host path). */
  ca: Schema.optional(Schema.String),
  /** Record each request before the swap (path, headers with references, 1 MiB of body). */
  capture: Schema.Boolean,
  /**
   * `proxy`: the endpoint also tunnels CONNECT to public destinations (the guest's HTTPS_PROXY points
   * at it); without it CONNECT is answered 405.
   */
  proxy: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  /**
   * With `proxy`: the destinations the tunnel may reach (`host`, `.suffix` or `A.B.C.D[/N]`, each with
   * an optional `:port`); empty, any public one.
   */
  connectAllow: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  /**
   * `trusted-upstream`: a relay that trusts the upstream with the credential and with what it answers;
   * `semantic`: only the operations of `grant`, and only the answers they allow (domain/BrokerGrant.ts).
   */
  assurance: Schema.optionalWith(Schema.Literal("trusted-upstream", "semantic"), {
    default: () => "trusted-upstream" as const
  }),
  /** A semantic endpoint's grant, as read from its file when the workspace was made. */
  grant: Schema.optional(BrokerGrant),
  /** The file the grant was read from (for `inspect`). */
  grantFile: Schema.optional(Schema.String),
  /** The guest's loopback port (18888 for the first endpoint, one up for each next). */
  guestPort: Schema.Number
}) {}

/** A declared output (`--output NAME=/path`), collected as an artifact. */
export class OutputDecl extends Schema.Class<OutputDecl>("OutputDecl")({
  name: Schema.String,
  path: Schema.String
}) {}

/** How far the entrypoint of one start got. */
export const EntrypointStatus = Schema.Literal("running", "exited", "start_failed", "lost")
export type EntrypointStatus = typeof EntrypointStatus.Type

/** Bytes of each of the entrypoint's stdout and stderr kept in its result; the rest is dropped and flagged. */
export const entrypointOutputLimit = 1024 * 1024

/**
 * The outcome of the entrypoint that one start ran: `running` until it ends; `exited` with its exit
 * code; `start_failed` with `startError` when it never ran (program not found, no shell in the image);
 * `lost` when the VM stopped before it ended. Each start replaces it.
 */
export class EntrypointResult extends Schema.Class<EntrypointResult>("EntrypointResult")({
  /** The start that ran it (the workspace's `sessionId` then). */
  sessionId: Schema.String,
  command: Schema.String,
  status: EntrypointStatus,
  exitCode: Schema.optional(Schema.Int),
  stdout: Schema.optionalWith(Schema.String, { default: () => "" }),
  stderr: Schema.optionalWith(Schema.String, { default: () => "" }),
  stdoutTruncated: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  stderrTruncated: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  startError: Schema.optional(Schema.String),
  /** Why the result is incomplete (`lost`). */
  error: Schema.optional(Schema.String),
  startedAt: Schema.optional(Schema.DateTimeUtc),
  finishedAt: Schema.optional(Schema.DateTimeUtc)
}) {}

/**
 * A health check of a running workspace: `exec` (argv run in the guest, healthy on exit 0) or `httpGet`
 * (a GET from the host to the published port of guest `port`, healthy on a status below 400). After
 * `startPeriodSeconds`, probed every `intervalSeconds`; `retries` failures in a row kill the VM and
 * record it `failed`.
 */
export class HealthCheck extends Schema.Class<HealthCheck>("HealthCheck")({
  exec: Schema.optional(Schema.NonEmptyArray(Schema.String)),
  httpGet: Schema.optional(Schema.Struct({
    path: Schema.String.pipe(Schema.startsWith("/")),
    port: Schema.Int.pipe(Schema.between(1, 65535))
  })),
  intervalSeconds: Schema.Int.pipe(Schema.between(1, 86400)),
  timeoutSeconds: Schema.Int.pipe(Schema.between(1, 3600)),
  retries: Schema.Int.pipe(Schema.between(1, 1000)),
  startPeriodSeconds: Schema.Int.pipe(Schema.between(0, 86400))
}) {}

/** The reference's defaults: every 30 s, 5 s to answer, 3 failures in a row, no start period. */
export const healthDefaults = {
  intervalSeconds: 30,
  timeoutSeconds: 5,
  retries: 3,
  startPeriodSeconds: 0
} as const

/**
 * What the host last saw of the current start's service: how often the guest restarted it, its last
 * exit code and the delay before its latest restart (reset with each start).
 */
export class ServiceStatus extends Schema.Class<ServiceStatus>("ServiceStatus")({
  sessionId: Schema.String,
  restarts: Schema.Int,
  lastExitCode: Schema.optional(Schema.Int),
  lastDelaySeconds: Schema.optional(Schema.Int),
  lastRestartAt: Schema.optional(Schema.DateTimeUtc)
}) {}

/** The persisted record of a workspace. Paths are absolute. */
/**
 * The verification baseline setup records on success: the root disk's SHA-256 with the guest's writes
 * flushed and the VM held still while it is read, and the boot configuration it was made under.
 */
export const SetupBaseline = Schema.Struct({
  recordedAt: Schema.DateTimeUtc,
  /** SHA-256 of the root disk image (every byte of its apparent size); absent where the backend has no disk file. */
  rootfsSha256: Schema.optional(Schema.String),
  rootfsBytes: Schema.optional(Schema.Number),
  boot: Schema.Struct({
    imageDigest: Schema.optional(Schema.String),
    kernelSha256: Schema.optional(Schema.String),
    initrdSha256: Schema.optional(Schema.String),
    memoryMiB: Schema.Number,
    cpus: Schema.Number,
    hostname: Schema.String,
    network: Schema.String
  })
})
export type SetupBaseline = typeof SetupBaseline.Type

export class Workspace extends Schema.Class<Workspace>("Workspace")({
  name: WorkspaceName,
  state: State,
  backend: Backend,
  profile: Schema.optional(ProfileName),
  resources: Resources,
  image: ImageInfo,
  env: Schema.Record({ key: Schema.String, value: Schema.String }),
  hostname: Schema.String,
  network: NetworkMode,
  /** The guest's own addressing on the user network; absent: QEMU's 10.0.2.15/24 through 10.0.2.2. */
  addressing: Schema.optional(Addressing),
  restart: RestartPolicy,
  ports: Schema.optionalWith(Schema.Array(PublishedPort), { default: () => [] }),
  /** Named networks this workspace is a member of (its address on each is in the store). */
  networks: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  /**
   * The model the guest reaches at http://127.0.0.1:11434/v1 (`--model`): its canonical reference, how
   * its requests are mediated, and for `policy` the policy file (read again at each start).
   */
  model: Schema.optional(Schema.Struct({
    ref: Schema.String,
    mediation: ModelMediation,
    policyFile: Schema.optional(Schema.String)
  })),
  /** Egress mediation of the user network; absent means the default (`broker`). */
  egress: Schema.optional(EgressPolicy),
  /** Credential broker endpoints (`--broker`), in order: endpoint N is at 127.0.0.1:18888+N. */
  brokers: Schema.optionalWith(Schema.Array(BrokerEndpoint), { default: () => [] }),
  mounts: Schema.optionalWith(Schema.Array(Mount), { default: () => [] }),
  secrets: Schema.optionalWith(Schema.Array(SecretRef), { default: () => [] }),
  outputs: Schema.optionalWith(Schema.Array(OutputDecl), { default: () => [] }),
  /** Shell command each `start` runs and reports as the workspace's result. */
  entrypoint: Schema.optional(Schema.String),
  /** Host files copied into the guest at every start, before the entrypoint. */
  files: Schema.optionalWith(Schema.Array(FileCopy), { default: () => [] }),
  /** Shell commands run once, in order, before the first start's entrypoint. */
  setup: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  /** Shell command the guest keeps running, restarting it with back-off (see Service.ts). */
  service: Schema.optional(Schema.String),
  /** The service as the host last saw it. */
  serviceStatus: Schema.optional(ServiceStatus),
  /** The absolute guest path of the shell `connect` runs (default /bin/sh). */
  shell: Schema.optional(Schema.String),
  health: Schema.optional(HealthCheck),
  /** Why the VM was last killed by the host (a failing health check); cleared by the next start. */
  failure: Schema.optional(Schema.String),
  /** When setup succeeded; absent while it is pending (the next start runs it). */
  setupDone: Schema.optional(Schema.DateTimeUtc),
  /**
   * The disk was cloned from the image by `create` (not copied from another workspace or a snapshot):
   * until it changes, its first start may restore a warm-start template instead of booting.
   */
  diskFromImage: Schema.optional(Schema.Boolean),
  /** What setup left: the verification baseline recorded when it succeeded (Setup.ts). */
  setupBaseline: Schema.optional(SetupBaseline),
  /** The entrypoint's outcome for the latest start that ran one. */
  result: Schema.optional(EntrypointResult),
  /**
   * The memory and vCPUs the running VM was given when a start overrode the record's (`start
   * --memory`, `--cpus`, `--profile`); absent when it runs with `resources`. A memory snapshot
   * records these, as they are what its memory holds.
   */
  launched: Schema.optional(Resources),
  /**
   * Set by `create --from-snapshot` from a memory snapshot: the next start resumes the captured VM
   * (its state copied into the workspace's directory as `vm.state`) instead of booting, then gives
   * the guest this workspace's identity. Cleared once a start has used it.
   */
  pendingResume: Schema.optional(Schema.Struct({
    /** `WORKSPACE:TAG` it came from. */
    snapshot: Schema.String,
    /** The hostname the captured guest was booted with (its kernel command line must match). */
    hostname: Schema.String,
    resources: Resources,
    kernelSha256: Schema.optional(Schema.String)
  })),
  /**
   * The end of the workspace's lease (`--ttl`): past it, `gc` stops the workspace and `start` refuses
   * it unless given a new lease. Absent: no lease (it lives until deleted).
   */
  expiresAt: Schema.optional(Schema.DateTimeUtc),
  /** One-shot workspaces made by `run` (deleted afterwards unless kept). */
  ephemeral: Schema.Boolean,
  rootfsPath: Schema.String,
  runtimeDir: Schema.String,
  /** Identifies one VM execution; new on every start. */
  sessionId: Schema.optional(Schema.String),
  /** In a cluster: the id of the runner that holds the workspace (set by the cluster, never stored). */
  host: Schema.optional(Schema.String),
  /** Backend-specific handle of the running VMM (pid, sockets), JSON. */
  vm: Schema.optional(Schema.Unknown),
  /** The process carrying out a start or halt right now; if it dies, the next reader repairs the state. */
  owner: Schema.optional(Schema.Struct({ pid: Schema.Int, startTime: Schema.String })),
  /**
   * The process whose one-shot `run` this (ephemeral) workspace is: when it is gone, the run can never
   * delete the workspace itself, so the runtime and `gc` do (see Gc.ts `reapAbandonedRuns`).
   */
  heldBy: Schema.optional(Schema.Struct({ pid: Schema.Int, startTime: Schema.String })),
  /**
   * A child of a fork still under way: the process making the fork and the capture (`W:TAG`) it comes
   * from. Cleared when the fork ends; a fork whose process died is undone whole by the runtime and `gc`
   * (Gc.ts `abandonedForks`), as the fork itself would have undone it.
   */
  forkedBy: Schema.optional(
    Schema.Struct({ pid: Schema.Int, startTime: Schema.String, snapshot: Schema.String })
  ),
  createdAt: Schema.DateTimeUtc,
  updatedAt: Schema.DateTimeUtc
}) {}

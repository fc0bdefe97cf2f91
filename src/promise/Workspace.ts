/**
 * A workspace for applications that do not use Effect: each method is one program of the library
 * (src/programs/) run on a Host, its failures rejected as `MicroagentError`s with the library's kinds.
 *
 *   await using ws = await Workspace.create({ image: "alpine:3.20" })
 *   const result = await ws.exec(["sh", "-c", "echo hi"])
 *
 * `await using` (or `ws[Symbol.asyncDispose]()`) deletes the workspace, killing its VM first.
 */
import { Duration, Effect, Either, Stream } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import type { AddressingRequest } from "../domain/Addressing.ts"
import { parseBrokers } from "../domain/Broker.ts"
import {
  type CredentialSwap,
  type EgressMode,
  EgressPolicy,
  normalizeAllow,
  parseCredSwap
} from "../domain/Egress.ts"
import { InvalidInput } from "../domain/Errors.ts"
import type { ExecResult } from "../domain/Exec.ts"
import { FileCopy } from "../domain/FileCopy.ts"
import type { RunPlan } from "../domain/Plan.ts"
import { parseSecretFlags } from "../domain/SecretRefs.ts"
import type { SnapshotManifest, WorkspaceCopy } from "../domain/Snapshot.ts"
import { parseSnapshotRef } from "../domain/SnapshotRestore.ts"
import type { SpecHealth } from "../domain/Spec.ts"
import { healthCheckOf } from "../domain/Supervision.ts"
import type { ResizeResult, WorkspaceStats } from "../domain/Usage.ts"
import {
  type Backend,
  type EntrypointResult,
  SecretRef,
  type Workspace as WorkspaceRecord
} from "../domain/Workspace.ts"
import {
  streamWithWorkspaceBackend,
  withBackend,
  withWorkspaceBackend
} from "../layers/backends/WorkspaceBackends.ts"
import { Ext4Disks } from "../layers/rootfs/Ext4Resize.ts"
import * as SecretsLive from "../layers/secrets/SecretsLive.ts"
import { clone, createFromSnapshot } from "../programs/Clone.ts"
import { type CommitOptions, type CommitResult, workspaceCommit } from "../programs/Commit.ts"
import { copyIn, copyOut } from "../programs/Cp.ts"
import { create, type CreateOptions as CreateProgramOptions } from "../programs/Create.ts"
import { remove } from "../programs/Delete.ts"
import { result } from "../programs/Entrypoint.ts"
import { exec, execStream } from "../programs/Exec.ts"
import { fork } from "../programs/Fork.ts"
import { halt, kill } from "../programs/Halt.ts"
import { type ExecOverrides, execRequestFor } from "../programs/internal/Requests.ts"
import { inspect, list } from "../programs/Observe.ts"
import { pause, resume } from "../programs/Pause.ts"
import { plan } from "../programs/Plan.ts"
import { quarantine } from "../programs/Quarantine.ts"
import { resize } from "../programs/Resize.ts"
import { snapshotCreate } from "../programs/Snapshot.ts"
import { start } from "../programs/Start.ts"
import { stats } from "../programs/Stats.ts"
import { supervise, type SuperviseReport } from "../programs/Supervise.ts"
import { Home } from "../services/Home.ts"
import { Secrets } from "../services/Secrets.ts"
import { StateStore } from "../services/StateStore.ts"
import { defaultHost, type Host, registryOnHome } from "./Host.ts"

export type { ExecResult } from "../domain/Exec.ts"
export type { RunPlan } from "../domain/Plan.ts"
export type { SnapshotManifest, WorkspaceCopy } from "../domain/Snapshot.ts"
export type { ResizeResult, WorkspaceStats } from "../domain/Usage.ts"
export type { EntrypointResult, Workspace as WorkspaceRecord } from "../domain/Workspace.ts"

export interface CreateOptions {
  /** An OCI image reference (`alpine:3.20`, `registry/name@sha256:…`) or a built-in image. */
  readonly image: string
  /** Default: a generated name. */
  readonly name?: string | undefined
  readonly cpus?: number | undefined
  readonly memoryMiB?: number | undefined
  /** Size of the root disk. */
  readonly sizeMiB?: number | undefined
  /** Environment of every command, over the image's. */
  readonly env?: Readonly<Record<string, string>> | undefined
  /** `none` cuts the guest off; default: outbound access through the host. */
  readonly network?: CreateProgramOptions["network"]
  /**
   * Egress mediation of the user network (docs/egress.md). Default `{ mode: "broker" }`: the public
   * internet only, never the host, loopback or private ranges; `allow` entries are host, .suffix or
   * A.B.C.D[/N], each with an optional :port.
   */
  readonly egress?: {
    readonly mode?: EgressMode | undefined
    readonly allow?: ReadonlyArray<string> | undefined
    readonly lockAllowlist?: boolean | undefined
    readonly maxConns?: number | undefined
    readonly maxTotalBytes?: number | undefined
    /** Bytes per second each way of each connection; faster senders are slowed, not cut. */
    readonly maxBps?: number | undefined
    /** `mitm`: destinations allowed and never intercepted. */
    readonly passthrough?: ReadonlyArray<string> | undefined
    /**
     * `mitm`: `PROVIDER[=env:VAR|file:PATH]` credential swaps (anthropic, openai, gemini, groq, openrouter,
     * deepseek): this process resolves the key at each start and the host sets it on requests to the
     * provider's API; the guest never holds it.
     */
    readonly credSwap?: ReadonlyArray<string> | undefined
  } | undefined
  /** Default: the host's backend. */
  readonly backend?: Backend | undefined
  /**
   * Secrets delivered to /run/secrets/NAME at every start, as `NAME=env:VAR`, `NAME=file:PATH` or
   * `NAME=dotenv:PATH[:KEY]`: only the references are recorded; this process resolves them at each start.
   */
  readonly secrets?: ReadonlyArray<string> | undefined
  /**
   * Credential broker endpoints, `upstream=URL;secret=NAME=SOURCE;base-url-env=KEY` each (docs/egress.md,
   * "Credential broker"): the guest sends `@secret:NAME` to http://127.0.0.1:18888+N and never holds
   * the value, which this process resolves at each start and the host-side broker swaps in.
   */
  readonly brokers?: ReadonlyArray<string> | undefined
  /**
   * The guest's own IPv4 addressing on the user network: `ip` (`A.B.C.D/N`), `subnet`, `gateway`,
   * `dns` (its resolvers; only with egress `off`), `routes` (`"A.B.C.D/N via A.B.C.D"`).
   */
  readonly addressing?: AddressingRequest | undefined
  /** A shell command each start runs in the background; its outcome is `result()`. */
  readonly entrypoint?: string | undefined
  /** Shell commands run once, in order, before the first start's entrypoint (a failing one fails that start and is retried by the next). */
  readonly setup?: ReadonlyArray<string> | undefined
  /**
   * Host files copied into the guest at every start, before setup and the entrypoint: `source` an
   * absolute host path, `target` an absolute guest path named once, `mode` its permission bits.
   */
  readonly files?:
    | ReadonlyArray<{ readonly source: string; readonly target: string; readonly mode?: number | undefined }>
    | undefined
  /** What `supervise()` does when the VM stops: `never` (default), `on-failure`, `always`. */
  readonly restart?: "never" | "on-failure" | "always" | undefined
  /** A shell command the guest keeps running, restarted with back-off (1 s doubling to 30 s). */
  readonly service?: string | undefined
  /** The absolute guest path of the shell `connect` runs (default /bin/sh). */
  readonly shell?: string | undefined
  /**
   * A health check, as the spec's `health:` (`exec` argv or `httpGet` with `port`; the timing fields
   * default to 30 s, 5 s, 3 retries, no start period). Checked while `supervise()` runs.
   */
  readonly health?: typeof SpecHealth.Type | undefined
  /** A lease in seconds: past it `microagent gc` stops the workspace (0 or absent: none). */
  readonly ttlSeconds?: number | undefined
  /**
   * A GGUF model the guest reaches at $OPENAI_BASE_URL (http://127.0.0.1:11434/v1), pulled if needed,
   * with its mediation (`off` by default; `policy` needs `policyFile`). docs/models.md.
   */
  readonly model?: {
    readonly ref: string
    readonly mediation?: "off" | "local-allow" | "policy" | undefined
    readonly policyFile?: string | undefined
  } | undefined
  /** Boot it now (default) or leave it prepared until `start()`. */
  readonly start?: boolean | undefined
  readonly bootTimeoutSeconds?: number | undefined
  /** Boot even when a warm start (a saved template restored instead of a boot) is possible. */
  readonly cold?: boolean | undefined
  /** Default: the process's default Host (`$MICROAGENT_HOME`, `$MICROAGENT_BACKEND`). */
  readonly host?: Host | undefined
  readonly signal?: AbortSignal | undefined
}

export interface ExecOptions extends ExecOverrides {
  /** Bytes (or text) given to the command on its standard input. */
  readonly stdin?: string | Uint8Array | undefined
  /** Aborting interrupts the command in the guest; the promise rejects with the signal's reason. */
  readonly signal?: AbortSignal | undefined
}

/** A piece of streamed output; the last one is `exit`. */
export type Output =
  | { readonly type: "stdout" | "stderr"; readonly data: Uint8Array }
  | { readonly type: "exit"; readonly result: ExecResult }

const egressPolicy = (egress: CreateOptions["egress"], swaps: ReadonlyArray<CredentialSwap>) =>
  egress === undefined ? undefined : new EgressPolicy({
    mode: egress.mode ?? "broker",
    allow: [...new Set((egress.allow ?? []).map(normalizeAllow))],
    lockAllowlist: egress.lockAllowlist ?? false,
    passthrough: [...new Set((egress.passthrough ?? []).map(normalizeAllow))],
    swaps,
    ...(egress.maxConns === undefined ? {} : { maxConns: egress.maxConns }),
    ...(egress.maxTotalBytes === undefined ? {} : { maxTotalBytes: egress.maxTotalBytes }),
    ...(egress.maxBps === undefined ? {} : { maxBps: egress.maxBps })
  })

const bytesOf = (
  data: string | Uint8Array
) => (typeof data === "string" ? new TextEncoder().encode(data) : data)

const stdinOf = (stdin: string | Uint8Array | undefined) =>
  stdin === undefined ? undefined : Stream.make(bytesOf(stdin))

/** The workspace's record as stored (no look at its VM). */
const stored = (name: string) => Effect.flatMap(StateStore, (store) => store.get(name))

/** A private directory under the state directory's tmp/ for one file transfer, removed afterwards. */
const transferDir = Effect.flatMap(Home, (home) =>
  Effect.acquireRelease(
    Effect.sync(() => NodeFs.mkdtempSync(NodePath.join(home.tmp, "files-"))),
    (dir) => Effect.sync(() => NodeFs.rmSync(dir, { recursive: true, force: true }))
  ))

/** The spec-shaped health check of `create()`, checked like the spec's. */
const healthOf = (health: typeof SpecHealth.Type | undefined) =>
  health === undefined
    ? Effect.succeed(undefined)
    : Either.match(healthCheckOf(health), {
      onLeft: (message) =>
        Effect.fail(new InvalidInput({ message, remediation: "see docs/agents.md for the health fields" })),
      onRight: (check) => Effect.succeed(check)
    })

/** The options of the `create` program (and of a plan of one), the health check decoded. */
const programOptions = (options: CreateOptions) =>
  Effect.gen(function*() {
    const health = yield* healthOf(options.health)
    const secrets = yield* parseSecretFlags(options.secrets ?? [], process.cwd())
    const brokered = yield* parseBrokers(
      options.brokers ?? [],
      process.cwd(),
      (path) => NodeFs.readFileSync(path, "utf8")
    )
    const swapped = yield* Effect.forEach(options.egress?.credSwap ?? [], (text) => parseCredSwap(text))
    return {
      health,
      secrets: [
        ...secrets,
        ...brokered.secrets,
        ...swapped.map((s) => new SecretRef({ name: s.secret.name, source: s.secret.source, use: "broker" }))
      ],
      brokers: brokered.endpoints,
      swaps: swapped.map((s) => s.swap)
    }
  }).pipe(Effect.map(({ brokers, health, secrets, swaps }) => ({
    secrets,
    brokers,
    image: options.image,
    name: options.name,
    cpus: options.cpus,
    memoryMiB: options.memoryMiB,
    sizeMiB: options.sizeMiB,
    env: options.env,
    network: options.network,
    addressing: options.addressing,
    entrypoint: options.entrypoint,
    setup: options.setup,
    files: options.files?.map((f) =>
      new FileCopy({ source: f.source, target: f.target, ...(f.mode === undefined ? {} : { mode: f.mode }) })
    ),
    restart: options.restart,
    service: options.service,
    shell: options.shell,
    health,
    ttlSeconds: options.ttlSeconds,
    egress: egressPolicy(options.egress, swaps),
    model: options.model === undefined
      ? undefined
      : { model: options.model.ref, mediation: options.model.mediation, policyFile: options.model.policyFile }
  })))

/** The values of a workspace's secret references, resolved in this process (as every start needs). */
const secretValuesOf = (name: string) =>
  Effect.flatMap(stored(name), (workspace) =>
    workspace.secrets.length === 0
      ? Effect.succeed(undefined)
      : Effect.flatMap(Secrets, (secrets) => secrets.resolve(workspace.secrets)).pipe(
        Effect.provide(SecretsLive.layer)
      ))

/** Files in the workspace, moved through the same transfer as `microagent cp` (running or halted). */
export class WorkspaceFiles {
  readonly #workspace: Workspace
  constructor(workspace: Workspace) {
    this.#workspace = workspace
  }

  /** Writes `data` to the absolute guest path `path` (replacing a file there), owned by root, mode 0644. */
  write(
    path: string,
    data: string | Uint8Array,
    options: { readonly signal?: AbortSignal } = {}
  ): Promise<void> {
    const name = this.#workspace.name
    return this.#workspace.host.run(
      Effect.scoped(Effect.gen(function*() {
        const dir = yield* transferDir
        const file = NodePath.join(dir, NodePath.posix.basename(path) || "file")
        yield* Effect.sync(() => NodeFs.writeFileSync(file, bytesOf(data), { mode: 0o644 }))
        yield* withWorkspaceBackend(name, copyIn(name, file, path))
      })),
      options
    )
  }

  /** The bytes of the guest file at the absolute path `path`. */
  read(path: string, options: { readonly signal?: AbortSignal } = {}): Promise<Uint8Array> {
    const name = this.#workspace.name
    return this.#workspace.host.run(
      Effect.scoped(Effect.gen(function*() {
        const dir = yield* transferDir
        const file = NodePath.join(dir, "out")
        yield* withWorkspaceBackend(name, copyOut(name, path, file))
        if (NodeFs.statSync(file).isDirectory()) {
          return yield* new InvalidInput({
            message: `${path} in workspace ${name} is a directory`,
            remediation: "read files one at a time"
          })
        }
        return new Uint8Array(NodeFs.readFileSync(file))
      })),
      options
    )
  }

  /** The guest file at `path` as UTF-8 text. */
  async readText(path: string, options: { readonly signal?: AbortSignal } = {}): Promise<string> {
    return new TextDecoder().decode(await this.read(path, options))
  }
}

export class Workspace implements AsyncDisposable {
  readonly name: string
  readonly host: Host
  readonly files: WorkspaceFiles

  private constructor(name: string, host: Host) {
    this.name = name
    this.host = host
    this.files = new WorkspaceFiles(this)
  }

  /** Creates a workspace from an image and (unless `start: false`) boots it. A failed boot deletes it. */
  static async create(options: CreateOptions): Promise<Workspace> {
    const host = options.host ?? defaultHost()
    const record = await host.run(
      withBackend(
        options.backend,
        Effect.flatMap(programOptions(options), create)
      ),
      { signal: options.signal }
    )
    const workspace = new Workspace(record.name, host)
    if (options.start !== false) {
      await workspace.start({
        bootTimeoutSeconds: options.bootTimeoutSeconds,
        cold: options.cold,
        signal: options.signal
      }).catch(
        async (error: unknown) => {
          await workspace.delete().catch(() => undefined)
          throw error
        }
      )
    }
    return workspace
  }

  /**
   * What `create` would do with these options (the image and its digest if the local store has it,
   * the kernel, resources, network, entrypoint), checked as `create` checks them; nothing is pulled,
   * booted or written.
   */
  static plan(options: CreateOptions): Promise<RunPlan> {
    const host = options.host ?? defaultHost()
    return host.run(
      withBackend(
        options.backend,
        Effect.flatMap(programOptions(options), (checked) => plan({ ...checked, kind: "create" }))
      ),
      { signal: options.signal }
    )
  }

  /**
   * A new prepared workspace whose disk is a snapshot's (`snapshot` is `WORKSPACE:TAG`), configured
   * like that workspace, with its own identity; `start()` boots it cold. Rejects `not_found` for an
   * unknown workspace or tag.
   */
  static async fromSnapshot(
    name: string,
    snapshot: string,
    options: { readonly host?: Host | undefined; readonly signal?: AbortSignal | undefined } = {}
  ): Promise<Workspace> {
    const host = options.host ?? defaultHost()
    const copy = await host.run(
      Either.match(parseSnapshotRef(snapshot), {
        onLeft: (error) => Effect.fail(error),
        onRight: (ref) => withWorkspaceBackend(ref.workspace, createFromSnapshot(name, snapshot))
      }),
      { signal: options.signal }
    )
    return new Workspace(copy.workspace.name, host)
  }

  /** An existing workspace by name; rejects `not_found` if there is none. */
  static async get(name: string, options: { readonly host?: Host | undefined } = {}): Promise<Workspace> {
    const host = options.host ?? defaultHost()
    await host.run(stored(name))
    return new Workspace(name, host)
  }

  /** The workspaces of the host's state directory. */
  static list(options: { readonly host?: Host | undefined } = {}): Promise<ReadonlyArray<WorkspaceRecord>> {
    return (options.host ?? defaultHost()).run(list())
  }

  /** The workspace's record: state, image, resources, backend, timestamps. */
  inspect(): Promise<WorkspaceRecord> {
    return this.host.run(
      withWorkspaceBackend(this.name, Effect.map(inspect(this.name), (found) => found.workspace))
    )
  }

  /**
   * Runs a command (no shell) and waits for it. A non-zero exit is a result, not a rejection; the image's
   * Env, User and WorkingDir are the defaults.
   */
  exec(argv: readonly [string, ...Array<string>], options: ExecOptions = {}): Promise<ExecResult> {
    const name = this.name
    return this.host.run(
      withWorkspaceBackend(
        name,
        Effect.flatMap(
          stored(name),
          (ws) => exec(name, execRequestFor(ws, argv, options), stdinOf(options.stdin))
        )
      ),
      { signal: options.signal }
    )
  }

  /**
   * Runs a command and yields its output as it comes, then its `exit`. Leaving the loop early stops the
   * command in the guest.
   */
  stream(
    argv: readonly [string, ...Array<string>],
    options: Omit<ExecOptions, "signal"> = {}
  ): AsyncIterable<Output> {
    const name = this.name
    return this.host.iterate(
      Stream.unwrap(
        Effect.map(
          stored(name),
          (ws) =>
            execStream(name, execRequestFor(ws, argv, options), stdinOf(options.stdin)).pipe(
              Stream.map((out): Output =>
                out._tag === "Exit"
                  ? { type: "exit", result: out.result }
                  : { type: out._tag === "Stdout" ? "stdout" : "stderr", data: out.data }
              )
            )
        )
      ).pipe((stream) => streamWithWorkspaceBackend(name, stream))
    )
  }

  /**
   * Boots a prepared or halted workspace from its disk and waits for its guest. `memoryMiB` and `cpus`
   * apply to this start only; `ttlSeconds` gives a new lease from now; `fromSnapshot` rolls the
   * workspace back to one of its snapshots first (a memory snapshot resumes instead of booting).
   */
  async start(
    options: {
      readonly bootTimeoutSeconds?: number | undefined
      readonly memoryMiB?: number | undefined
      readonly cpus?: number | undefined
      readonly ttlSeconds?: number | undefined
      /** Roll back to this snapshot tag first (see docs/snapshots.md). */
      readonly fromSnapshot?: string | undefined
      /** Boot even when a warm start is possible (see docs/snapshots.md, "Warm starts"). */
      readonly cold?: boolean | undefined
      readonly signal?: AbortSignal | undefined
    } = {}
  ): Promise<void> {
    await this.host.run(
      withWorkspaceBackend(
        this.name,
        Effect.flatMap(secretValuesOf(this.name), (secretValues) =>
          start(this.name, {
            bootTimeoutSeconds: options.bootTimeoutSeconds,
            memoryMiB: options.memoryMiB,
            cpus: options.cpus,
            ttlSeconds: options.ttlSeconds,
            fromSnapshot: options.fromSnapshot,
            cold: options.cold,
            secretValues
          }))
      ),
      { signal: options.signal }
    )
  }

  /**
   * Captures the workspace under `tag` (default `snap-<UTC time>`): memory, device state and disk when
   * it runs (it is paused for the capture and resumed), its disk when it is stopped. `start({
   * fromSnapshot })` rolls back to it; `Workspace.fromSnapshot` makes a new workspace of it.
   */
  async snapshot(
    options: {
      readonly tag?: string | undefined
      /** Keep everything as evidence (secrets, disks, networks); restores refuse it. */
      readonly forensic?: boolean | undefined
      readonly signal?: AbortSignal | undefined
    } = {}
  ): Promise<SnapshotManifest> {
    return await this.host.run(
      withWorkspaceBackend(
        this.name,
        Effect.flatMap(
          secretValuesOf(this.name),
          (secretValues) =>
            snapshotCreate(this.name, { tag: options.tag, forensic: options.forensic, secretValues })
        )
      ),
      { signal: options.signal }
    )
  }

  /**
   * Copies this prepared, halted or stopped workspace (disk and configuration) to a new prepared one
   * named `target`, with its own identity. Read-write volumes and image files are not carried over
   * (`droppedMounts`). Rejects `conflict` while this one runs.
   */
  async clone(
    target: string,
    options: { readonly signal?: AbortSignal | undefined } = {}
  ): Promise<{ readonly workspace: Workspace; readonly droppedMounts: WorkspaceCopy["droppedMounts"] }> {
    const copy = await this.host.run(withWorkspaceBackend(this.name, clone(this.name, target)), {
      signal: options.signal
    })
    return { workspace: new Workspace(copy.workspace.name, this.host), droppedMounts: copy.droppedMounts }
  }

  /**
   * `count` (default 1) running children of this running workspace, each resuming one memory capture
   * of it under its own name (`namePrefix-1` …), hostname and machine-id. All or nothing.
   */
  async fork(
    options: {
      readonly count?: number
      readonly namePrefix?: string
      readonly signal?: AbortSignal | undefined
    } = {}
  ): Promise<ReadonlyArray<Workspace>> {
    const { signal, ...forkOptions } = options
    const name = this.name
    const result = await this.host.run(
      withWorkspaceBackend(
        name,
        Effect.flatMap(secretValuesOf(name), (secretValues) => fork(name, { ...forkOptions, secretValues }))
      ),
      { signal }
    )
    return result.children.map((child) => new Workspace(child.name, this.host))
  }

  /** One sample of the running workspace's VMM (CPU, memory, I/O) and its root disk's use, from the host. */
  async stats(options: { readonly intervalMs?: number | undefined } = {}): Promise<WorkspaceStats> {
    return await this.host.run(
      withWorkspaceBackend(
        this.name,
        stats(
          this.name,
          options.intervalMs === undefined ? {} : { interval: Duration.millis(options.intervalMs) }
        )
      )
    )
  }

  /** Grows (or shrinks, down to its content) the root disk of the workspace while it is not running. */
  async resize(sizeMiB: number): Promise<ResizeResult> {
    return await this.host.run(
      withWorkspaceBackend(this.name, Effect.provide(resize(this.name, sizeMiB), Ext4Disks))
    )
  }

  /**
   * The outcome of the entrypoint the latest start ran (`status` `running` until it ends); with
   * `wait`, resolves once it has ended. Rejects `not_found` before any start ran one.
   */
  async result(
    options: {
      readonly wait?: boolean | undefined
      readonly timeoutSeconds?: number | undefined
      readonly signal?: AbortSignal | undefined
    } = {}
  ): Promise<EntrypointResult> {
    return await this.host.run(
      withWorkspaceBackend(
        this.name,
        result(this.name, { wait: options.wait, timeoutSeconds: options.timeoutSeconds })
      ),
      { signal: options.signal }
    )
  }

  /**
   * Keeps the workspace up until its restart policy says otherwise (or `maxRestarts` restarts, or the
   * signal aborts): starts it if it is not running, restarts it per `restart`, runs its health checks.
   * Ending it leaves a running VM running.
   */
  async supervise(
    options: {
      readonly intervalSeconds?: number | undefined
      readonly maxRestarts?: number | undefined
      readonly signal?: AbortSignal | undefined
    } = {}
  ): Promise<SuperviseReport> {
    return await this.host.run(
      withWorkspaceBackend(
        this.name,
        supervise(this.name, { intervalSeconds: options.intervalSeconds, maxRestarts: options.maxRestarts })
      ),
      { signal: options.signal }
    )
  }

  /** Shuts the guest down (killing the VM after `timeoutSeconds`, default 15); the disk is kept. */
  async halt(options: { readonly timeoutSeconds?: number | undefined } = {}): Promise<void> {
    await this.host.run(withWorkspaceBackend(this.name, halt(this.name, options)))
  }

  /** Freezes the guest's vCPUs (memory, disk and network kept); exec and files are refused until `resume`. */
  /**
   * Fences the network, freezes the vCPUs, captures console, events, egress log and (unless
   * `capture: false`) memory and disk into a custody record, and stops the VM. Start is refused
   * afterwards; `delete({ force: true })` removes the record.
   */
  async quarantine(options: { readonly reason?: string; readonly capture?: boolean } = {}) {
    return await this.host.run(withWorkspaceBackend(this.name, quarantine(this.name, options)))
  }

  async pause(): Promise<void> {
    await this.host.run(withWorkspaceBackend(this.name, pause(this.name)))
  }

  /** Lets a paused guest run on. */
  async resume(): Promise<void> {
    await this.host.run(withWorkspaceBackend(this.name, resume(this.name)))
  }

  /**
   * Saves the root filesystem of this halted, stopped or prepared workspace as image `ref` in the store
   * (one squashed layer, or `diff` for the base's layers plus one of the changes); `push` sends it to
   * its registry afterwards. The same content gives the same digest.
   */
  async commit(
    ref: string,
    options: CommitOptions & { readonly signal?: AbortSignal | undefined } = {}
  ): Promise<CommitResult> {
    const { signal, ...commitOptions } = options
    return await this.host.run(
      withWorkspaceBackend(this.name, workspaceCommit(this.name, ref, commitOptions)).pipe(
        Effect.provide(registryOnHome)
      ),
      { signal }
    )
  }

  /** Kills the VM at once; the disk is kept. */
  async kill(options: { readonly reason?: string } = {}): Promise<void> {
    await this.host.run(withWorkspaceBackend(this.name, kill(this.name, options)))
  }

  /** Deletes the workspace and its disk, killing its VM first if it runs. Deleting it twice is no error. */
  async delete(): Promise<void> {
    await this.host.run(
      withWorkspaceBackend(this.name, remove(this.name, { force: true })).pipe(
        Effect.catchTag("NotFound", () => Effect.void)
      )
    )
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.delete()
  }
}

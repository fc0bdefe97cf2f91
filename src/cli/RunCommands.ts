/**
 * The Run group: `run`, `create`, `start`, `exec`.
 */
import { Args, Command, Options } from "@effect/cli"
import { Effect, Either, Option, Stream } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import {
  collectSwaps,
  type CredentialSwap,
  decodeEgressPolicyFile,
  EgressMode,
  EgressPolicy,
  type EgressReceipt,
  normalizeAllow
} from "../domain/Egress.ts"
import { InvalidInput } from "../domain/Errors.ts"
import type { ExecResult } from "../domain/Exec.ts"
import { FileCopy, parseFileCopy, parseMode } from "../domain/FileCopy.ts"
import { parseLabels } from "../domain/Placement.ts"
import { planText } from "../domain/Plan.ts"
import type { CreateRequest, ExecCommand } from "../domain/Requests.ts"
import { parseSnapshotRef } from "../domain/SnapshotRestore.ts"
import type { Spec } from "../domain/Spec.ts"
import { SecretRef, type Workspace } from "../domain/Workspace.ts"
import { defaultBackend } from "../layers/backends/Backends.ts"
import { defaultImage } from "../layers/image/BuiltinImages.ts"
import { createFromSnapshot } from "../programs/Clone.ts"
import { create } from "../programs/Create.ts"
import { allOutputsOf } from "../programs/internal/Outputs.ts"
import { plan } from "../programs/Plan.ts"
import { resolveSecrets } from "../rpc/CallerSecrets.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { defined } from "../rpc/Rpcs.ts"
import { reportCopy } from "./clone.ts"
import {
  constraintOption,
  fileCopyOption,
  modelMediationOptions,
  optionalBytes,
  optionalDuration,
  optionalInt,
  orUndefined,
  outputOption,
  parseEnv,
  readSpec,
  setupFileOption,
  setupOption,
  ttlOption,
  workspaceOptions
} from "./Flags.ts"
import { Invocation } from "./Invocation.ts"
import { clusterOr, withNewBackend, withRuntime, withWorkspaceBackend } from "./Layers.ts"
import { waitAndReport } from "./LifecycleCommands.ts"
import { networkFields } from "./network.ts"
import { emit, jsonMode, writeStdout } from "./Output.ts"
import { refuseSupervisionInRun, serviceCommandOption, shellOption, supervisionOf } from "./supervise.ts"
import { allMountsOf, brokeredSecretsOf, secretRefsOf, secretsForStart } from "./volume.ts"

/** The whole of `--stdin`: a file, or `-` for our own stdin. */
const stdinBytes = (source: Option.Option<string>) =>
  Option.match(source, {
    onNone: () => Effect.succeed(undefined),
    onSome: (path) =>
      Effect.tryPromise({
        try: async () => {
          if (path !== "-") return new Uint8Array(NodeFs.readFileSync(path))
          const chunks: Array<Buffer> = []
          for await (const chunk of process.stdin) chunks.push(chunk as Buffer)
          return new Uint8Array(Buffer.concat(chunks))
        },
        catch: (cause) =>
          new InvalidInput({
            message: `cannot read --stdin ${path}: ${String(cause)}`,
            remediation: "check the path"
          })
      })
  })

const execOptions = {
  env: workspaceOptions.env,
  cwd: Options.text("cwd").pipe(
    Options.withPseudoName("DIR"),
    Options.withDescription("working directory in the guest"),
    Options.optional
  ),
  user: Options.text("user").pipe(
    Options.withPseudoName("USER"),
    Options.withDescription("user in the guest, a name or UID[:GID]"),
    Options.optional
  ),
  timeout: optionalDuration("timeout", "stop the command after this long (TERM, then KILL)"),
  stdoutLimit: optionalBytes(
    "stdout-limit",
    "keep at most BYTES of stdout (flagged when cut)"
  ),
  stderrLimit: optionalBytes(
    "stderr-limit",
    "keep at most BYTES of stderr (flagged when cut)"
  ),
  stdin: Options.text("stdin").pipe(
    Options.withPseudoName("FILE|-"),
    Options.withDescription("stdin from a file, or - for microagent's own"),
    Options.optional
  )
}

/** The spec's files (sources relative to the spec's directory), then the flags' (both appended). */
export const filesOf = (spec: Spec, file: Option.Option<string>, flags: ReadonlyArray<string>) =>
  Effect.map(
    Effect.forEach(flags, (text) => parseFileCopy(text, process.cwd())),
    (flagged) => [
      ...(spec.files ?? []).map((f) =>
        new FileCopy({
          source: NodePath.resolve(specDirOf(file), f.src),
          target: f.dst,
          ...(f.mode === undefined ? {} : { mode: parseMode(f.mode)! })
        })
      ),
      ...flagged
    ]
  )

/**
 * The spec's `setup` (a `{file}` read now), then its `setupFiles`, then the `--setup` flags, then the
 * `--setup-file` flags' files (relative to our working directory).
 */
export const setupOf = (
  spec: Spec,
  file: Option.Option<string>,
  flags: ReadonlyArray<string>,
  fileFlags: ReadonlyArray<string> = []
) =>
  Effect.try({
    try: () => {
      const read = (path: string) => NodeFs.readFileSync(NodePath.resolve(specDirOf(file), path), "utf8")
      return [
        ...(spec.setup ?? []).map((step) =>
          typeof step === "string" ? step : "run" in step ? step.run : read(step.file)
        ),
        ...(spec.setupFiles ?? []).map(read),
        ...flags,
        ...fileFlags.map((path) => NodeFs.readFileSync(NodePath.resolve(path), "utf8"))
      ]
    },
    catch: (cause) =>
      new InvalidInput({
        message: `a setup file cannot be read: ${cause instanceof Error ? cause.message : String(cause)}`,
        remediation: "a spec's setup files are relative to its directory; --setup-file to the current one"
      })
  })

/** Where a spec's relative paths start: its own directory (our working directory without a spec). */
export const specDirOf = (file: Option.Option<string>) =>
  Option.match(file, {
    onNone: () => process.cwd(),
    onSome: (path) => NodePath.dirname(NodePath.resolve(path))
  })

/** What shapes a new workspace: each flag, else the spec's field. */
const workspaceFields = (
  options: {
    readonly profile: Option.Option<Spec["profile"] & string>
    readonly memory: Option.Option<number>
    readonly cpus: Option.Option<number>
    readonly sizeMiB: Option.Option<number>
    readonly hostname: Option.Option<string>
    readonly network: ReadonlyArray<string>
    readonly publish: ReadonlyArray<string>
    readonly refuseDevices: boolean
    readonly ttl: Option.Option<number>
    readonly egress: Option.Option<EgressMode>
    readonly egressAllow: ReadonlyArray<string>
    readonly egressLockAllowlist: boolean
    readonly egressMaxConns: Option.Option<number>
    readonly egressMaxTotalBytes: Option.Option<number>
    readonly egressMaxBps: Option.Option<number>
    readonly egressPolicy: Option.Option<string>
    readonly egressPassthrough: ReadonlyArray<string>
    readonly credSwap: ReadonlyArray<string>
    readonly egressSwapConfig: Option.Option<string>
    readonly model: Option.Option<string>
    readonly modelMediation?: Option.Option<"off" | "local-allow" | "policy">
    readonly modelPolicyFile?: Option.Option<string>
    readonly constraint?: ReadonlyArray<string>
  },
  spec: Spec
) =>
  Effect.map(
    Effect.all([
      networkFields(options, spec),
      egressPolicyFileOf(options),
      modelOf(options),
      parseLabels((options.constraint ?? []).join(","), "--constraint"),
      credentialSwapsOf(options, spec)
    ]),
    ([network, file, model, constraints, swaps]) => ({
      ...(Object.keys(constraints).length > 0 ? { constraints } : {}),
      egress: egressPolicyOf(options, spec, file, swaps.map((s) => s.swap)),
      /** The host-held secrets the swaps read: the caller adds them to the workspace's secrets. */
      swapSecrets: swaps.map((s) =>
        new SecretRef({ name: s.secret.name, source: s.secret.source, use: "broker" })
      ),
      profile: orUndefined(options.profile) ?? spec.profile,
      memoryMiB: orUndefined(options.memory) ?? spec.resources?.memoryMiB,
      cpus: orUndefined(options.cpus) ?? spec.resources?.cpuCount,
      sizeMiB: orUndefined(options.sizeMiB) ?? spec.resources?.sizeMiB,
      hostname: orUndefined(options.hostname) ?? spec.hostname,
      ...(options.refuseDevices ? { refuseDevices: true } : {}),
      ...(Option.isSome(options.ttl) ? { ttlSeconds: options.ttl.value } : {}),
      ...model,
      ...network
    })
  )

/** The mediation of a paired model: `create`'s flags, else $MICROAGENT_MODEL_MEDIATION and $MICROAGENT_MODEL_POLICY_FILE. */
const modelMediationOf = (options: {
  readonly modelMediation?: Option.Option<"off" | "local-allow" | "policy">
  readonly modelPolicyFile?: Option.Option<string>
}) =>
  Effect.gen(function*() {
    const fromEnv = process.env.MICROAGENT_MODEL_MEDIATION
    if (fromEnv !== undefined && fromEnv !== "" && !["off", "local-allow", "policy"].includes(fromEnv)) {
      return yield* new InvalidInput({
        message: `MICROAGENT_MODEL_MEDIATION=${fromEnv} is not one of off, local-allow, policy`
      })
    }
    const policyEnv = process.env.MICROAGENT_MODEL_POLICY_FILE
    return {
      mediation: Option.getOrUndefined(options.modelMediation ?? Option.none())
        ?? (fromEnv === "" ? undefined : fromEnv as "off" | "local-allow" | "policy" | undefined),
      policyFile: Option.getOrUndefined(options.modelPolicyFile ?? Option.none())
        ?? (policyEnv === "" ? undefined : policyEnv)
    }
  })

/** `--model REF` with its mediation; mediation flags without a model are refused. */
const modelOf = (options: {
  readonly model: Option.Option<string>
  readonly modelMediation?: Option.Option<"off" | "local-allow" | "policy">
  readonly modelPolicyFile?: Option.Option<string>
}) =>
  Effect.gen(function*() {
    if (Option.isNone(options.model)) {
      if (
        Option.isSome(options.modelMediation ?? Option.none())
        || Option.isSome(options.modelPolicyFile ?? Option.none())
      ) {
        return yield* new InvalidInput({
          message: "--model-mediation and --model-policy-file need --model REF",
          remediation: "add --model with the model's reference (`microagent model list`)"
        })
      }
      return {}
    }
    const { mediation, policyFile } = yield* modelMediationOf(options)
    return { model: { model: options.model.value, mediation, policyFile } }
  })

/** `--egress-policy FILE`: its destinations, checked; refused with `--egress off` (nothing to apply them). */
const egressPolicyFileOf = (
  options: { readonly egress: Option.Option<EgressMode>; readonly egressPolicy: Option.Option<string> }
) =>
  Option.match(options.egressPolicy, {
    onNone: () =>
      Effect.succeed<{ readonly allow: ReadonlyArray<string>; readonly passthrough: ReadonlyArray<string> }>({
        allow: [],
        passthrough: []
      }),
    onSome: (path) =>
      Effect.gen(function*() {
        if (Option.getOrUndefined(options.egress) === "off") {
          return yield* new InvalidInput({
            message: "--egress-policy with --egress off: with mediation off there is nothing to apply it",
            remediation: "drop --egress off (broker is the default) or the policy"
          })
        }
        const text = yield* Effect.try({
          try: () => NodeFs.readFileSync(path, "utf8"),
          catch: (cause) =>
            new InvalidInput({
              message: `--egress-policy ${path}: ${cause instanceof Error ? cause.message : String(cause)}`,
              remediation: "give a readable YAML or JSON file"
            })
        })
        return yield* decodeEgressPolicyFile(text, path)
      })
  })

/** The workspace's secrets with those its credential swaps read (held on the host, like a broker's). */
const withSwapSecrets = (
  secrets: ReadonlyArray<SecretRef> | undefined,
  swapSecrets: ReadonlyArray<SecretRef>
) =>
  swapSecrets.length === 0
    ? secrets
    : [...(secrets ?? []).filter((s) => !swapSecrets.some((w) => w.name === s.name)), ...swapSecrets]

/**
 * The credential swaps of `--cred-swap`, `--egress-swap-config` and the spec's `egress.credSwap` and
 * `agent.cred-swap`, each with the host-held secret it reads; a later one of the same name wins.
 */
const credentialSwapsOf = (
  options: { readonly credSwap: ReadonlyArray<string>; readonly egressSwapConfig: Option.Option<string> },
  spec: Spec
) =>
  Effect.gen(function*() {
    const texts = [
      ...(spec.egress?.credSwap ?? []),
      ...(spec.agent?.["cred-swap"] ?? []),
      ...options.credSwap
    ]
    if (Option.isNone(options.egressSwapConfig)) return yield* collectSwaps(texts)
    const path = options.egressSwapConfig.value
    const text = yield* Effect.try({
      try: () => NodeFs.readFileSync(path, "utf8"),
      catch: (cause) =>
        new InvalidInput({
          message: `--egress-swap-config ${path}: ${cause instanceof Error ? cause.message : String(cause)}`,
          remediation: "give a readable YAML or JSON file"
        })
    })
    return yield* collectSwaps(texts, { text, source: path })
  })

/** `--egress*` flags over the spec's `egress:`; flags win field by field, allowlists are unioned. */
export const egressPolicyOf = (
  options: {
    readonly egress: Option.Option<EgressMode>
    readonly egressAllow: ReadonlyArray<string>
    readonly egressLockAllowlist: boolean
    readonly egressMaxConns: Option.Option<number>
    readonly egressMaxTotalBytes: Option.Option<number>
    readonly egressMaxBps: Option.Option<number>
    readonly egressPassthrough?: ReadonlyArray<string>
  },
  spec: Spec,
  file: { readonly allow: ReadonlyArray<string>; readonly passthrough: ReadonlyArray<string> } = {
    allow: [],
    passthrough: []
  },
  swaps: ReadonlyArray<CredentialSwap> = []
): EgressPolicy => {
  const mode = orUndefined(options.egress) ?? spec.egress?.mode ?? spec.agent?.egress ?? "broker"
  if (mode === "off") {
    process.stderr.write(
      "microagent: warning: --egress off: the guest's network is not mediated; it reaches the host's loopback services and private networks\n"
    )
  }
  const maxConns = orUndefined(options.egressMaxConns) ?? spec.egress?.maxConns
  const maxTotalBytes = orUndefined(options.egressMaxTotalBytes) ?? spec.egress?.maxTotalBytes
  const maxBps = orUndefined(options.egressMaxBps) ?? spec.egress?.maxBps
  return new EgressPolicy({
    mode,
    allow: [
      ...new Set(
        [...(spec.egress?.allow ?? []), ...(spec.agent?.allow ?? []), ...options.egressAllow, ...file.allow]
          .map(normalizeAllow)
      )
    ],
    passthrough: [
      ...new Set(
        [...(spec.egress?.passthrough ?? []), ...(options.egressPassthrough ?? []), ...file.passthrough]
          .map(normalizeAllow)
      )
    ],
    swaps,
    lockAllowlist: options.egressLockAllowlist || (spec.egress?.lockAllowlist ?? false),
    ...(maxConns === undefined ? {} : { maxConns }),
    ...(maxTotalBytes === undefined ? {} : { maxTotalBytes }),
    ...(maxBps === undefined ? {} : { maxBps })
  })
}

/** Text mode: the guest's output goes to our stdout and stderr; JSON mode: the whole result. The guest's exit code becomes ours. */
const reportResult = (result: ExecResult, extra: Record<string, unknown>) =>
  Effect.gen(function*() {
    if (yield* jsonMode) yield* emit({ ...extra, result }, () => "")
    else {
      yield* writeStdout(result.stdout)
      if (result.stderr.length > 0) process.stderr.write(result.stderr)
      if (result.status === "timed_out") process.stderr.write(`microagent: command timed out\n`)
      if (result.status === "failed_to_start") {
        process.stderr.write(`microagent: ${result.error ?? "command failed to start"}\n`)
      }
    }
    process.exitCode = result.exitCode
  })

/** `--cold` on `run` and `start`: no warm start (docs/snapshots.md, "Warm starts"). */
const coldOption = Options.boolean("cold").pipe(
  Options.withDescription("boot, even where a warm template could be restored")
)

/** `run --setup`: in the one-shot boot, before the command. */
const runSetupOption = Options.text("setup").pipe(
  Options.withPseudoName("CMD"),
  Options.withDescription("shell command run before the command (repeatable)"),
  Options.repeated
)

/**
 * What `run` runs: the argv after the image (or after `--`), `--exec`'s shell command, or else an
 * Agentfile's `agent.entry` (run with sh -c); the image from the first argument or `--image`. Giving
 * either twice is a usage error.
 */
const runTarget = (
  options: { readonly image: Option.Option<string>; readonly imageFlag: Option.Option<string> },
  exec: Option.Option<string>,
  guestArgv: ReadonlyArray<string>,
  entry: string | undefined
) =>
  Effect.gen(function*() {
    if (Option.isSome(options.image) && Option.isSome(options.imageFlag)) {
      return yield* new InvalidInput({
        message: `two images given: --image ${options.imageFlag.value} and ${options.image.value}`,
        remediation:
          `with --image, put the command after --: microagent run --image ${options.imageFlag.value} -- ${
            [options.image.value, ...guestArgv].join(" ")
          } (or use --exec "CMD")`
      })
    }
    if (Option.isSome(exec) && guestArgv.length > 0) {
      return yield* new InvalidInput({
        message: "two commands given: --exec and an argv after the image",
        remediation: 'give one: --exec "CMD" (run with sh -c), or IMAGE -- CMD [ARG...]'
      })
    }
    // An Agentfile's `agent.entry` is the command when none is given.
    const command = Option.orElse(exec, () =>
      guestArgv.length === 0 ? Option.fromNullable(entry) : Option.none())
    return {
      image: Option.orElse(options.imageFlag, () =>
        options.image),
      command: Option.match(command, {
        onNone: () => [...guestArgv],
        onSome: (cmd) => ["/bin/sh", "-c", cmd]
      })
    }
  })

/** `run`, and `dispatch` (a run that answers with its egress receipt): one flag set, one handler. */
const oneShotCommand = (verb: "run" | "dispatch") =>
  Command.make(verb, {
    ...workspaceOptions,
    ...execOptions,
    keep: Options.boolean("keep").pipe(Options.withDescription("keep the workspace (halted) afterwards")),
    rm: Options.boolean("rm").pipe(Options.withDescription("remove the workspace afterwards (the default)")),
    dryRun: Options.boolean("dry-run").pipe(
      Options.withDescription("print the plan and boot nothing")
    ),
    imageFlag: Options.text("image").pipe(
      Options.withPseudoName("REF"),
      Options.withDescription("OCI image (or as IMAGE; default: built-in busybox)"),
      Options.optional
    ),
    exec: Options.text("exec").pipe(
      Options.withPseudoName("CMD"),
      Options.withDescription("a shell command (sh -c) instead of CMD [ARG...]"),
      Options.optional
    ),
    setup: runSetupOption,
    outputs: outputOption,
    cold: coldOption,
    // Described by --image (the Usage line names IMAGE), which keeps `run --help` to one screen.
    image: Args.text({ name: "image" }).pipe(Args.optional)
  }, (options) =>
    Effect.gen(function*() {
      const invocation = yield* Invocation
      const spec = yield* readSpec(options.file)
      yield* refuseSupervisionInRun(spec)
      if (options.keep && options.rm) {
        return yield* new InvalidInput({
          message: "--keep and --rm contradict each other",
          remediation: "pick one"
        })
      }
      const target = yield* runTarget(options, options.exec, invocation.guestArgv, spec.agent?.entry)
      const image = orUndefined(target.image) ?? spec.image ?? defaultImage
      const env = { ...spec.env, ...(yield* parseEnv(options.env)) }
      const json = yield* jsonMode
      const mounts = yield* allMountsOf(spec, specDirOf(options.file), options.volume)
      const brokered = yield* brokeredSecretsOf(
        options.broker,
        yield* secretRefsOf(options.secret),
        spec,
        specDirOf(options.file)
      )
      const { swapSecrets, ...fields } = yield* workspaceFields(options, spec)
      const { brokers } = brokered
      const secrets = withSwapSecrets(brokered.secrets, swapSecrets)
      const outputs = yield* allOutputsOf(spec, options.outputs)
      const files = yield* filesOf(spec, options.file, [])
      const setup = yield* setupOf(spec, options.file, options.setup)
      const secretValues = yield* resolveSecrets(secrets ?? [])
      if (options.dryRun) {
        const planned = yield* withNewBackend(plan(defined({
          kind: "run" as const,
          image,
          command: target.command,
          setup,
          files,
          ...fields,
          name: orUndefined(options.name) ?? spec.name,
          env,
          mounts,
          secrets,
          brokers,
          outputs
        })))
        return yield* emit(planned, planText)
      }
      const stdin = yield* stdinBytes(options.stdin)
      const outcome = yield* withRuntime(Effect.flatMap(MicroagentClient, (client) =>
        client.run(defined({
          image,
          command: target.command,
          setup,
          files,
          ...fields,
          name: orUndefined(options.name) ?? spec.name,
          env,
          keep: options.keep,
          bootTimeoutSeconds: orUndefined(options.bootTimeout),
          cwd: orUndefined(options.cwd),
          user: orUndefined(options.user),
          timeoutSeconds: orUndefined(options.timeout),
          stdoutLimit: orUndefined(options.stdoutLimit),
          stderrLimit: orUndefined(options.stderrLimit),
          stdin,
          mounts,
          secrets,
          brokers,
          secretValues,
          outputs,
          backend: invocation.backend ?? defaultBackend(),
          cold: options.cold || undefined,
          ...(verb === "dispatch" ? { receipt: true, namePrefix: "dispatch" } : {})
        }))))
      // Kept, or with outputs to fetch later: the generated name is needed.
      if ((options.keep || outputs.length > 0) && !json) {
        process.stderr.write(`workspace: ${outcome.workspace}\n`)
      }
      // The receipt goes to stderr in text mode, so that stdout stays the command's.
      if (outcome.receipt !== undefined && !json) process.stderr.write(receiptText(outcome.receipt))
      yield* reportResult(outcome.result, {
        workspace: outcome.workspace,
        kept: outcome.kept,
        ...(outcome.receipt === undefined ? {} : { receipt: outcome.receipt })
      })
    }))

const runCommand = oneShotCommand("run").pipe(
  Command.withDescription("boot a one-shot workspace from IMAGE, run a command in it, tear it down")
)

const dispatchCommand = oneShotCommand("dispatch").pipe(
  Command.withDescription(
    "run, answering with a receipt of the run's network activity from the egress mediator's audit log"
  )
)

/** The receipt as a few lines for a terminal: totals, then each destination (sorted). */
export const receiptText = (r: EgressReceipt) => {
  const hosts = (counts: Readonly<Record<string, number>>) =>
    Object.entries(counts).map(([host, n]) => `  ${host} ${n}`)
  const signals = Object.entries(r.signals).map(([signal, n]) => `${signal} ${n}`).join(", ")
  return [
    `egress receipt (${r.mode}): ${r.decisionCount} decisions, ${
      Object.values(r.allowByHost).reduce((a, b) => a + b, 0)
    } connections allowed, ${
      Object.values(r.denyByHost).reduce((a, b) => a + b, 0)
    } denied, ${r.bytesOut} bytes out, ${r.bytesIn} in`,
    ...(Object.keys(r.allowByHost).length > 0 ? ["allowed:", ...hosts(r.allowByHost)] : []),
    ...(Object.keys(r.denyByHost).length > 0 ? ["denied:", ...hosts(r.denyByHost)] : []),
    ...(signals === "" ? [] : [`signals: ${signals}`]),
    ""
  ].join("\n")
}

const describeWorkspace = (ws: Workspace) =>
  `${ws.name}  ${ws.state}  ${
    ws.host === undefined ? "" : `host=${ws.host}  `
  }image=${ws.image.ref}  backend=${ws.backend}  memory=${ws.resources.memoryMiB}MiB cpus=${ws.resources.cpus}`

/**
 * `create NAME --from-snapshot W:T`: the configuration is the snapshot's workspace's, so any other flag
 * would be silently ignored; it is refused instead.
 */
const createFromSnapshotCli = (options: Record<string, unknown>, reference: string) =>
  Effect.gen(function*() {
    const given = Object.entries(options).filter(([key, value]) =>
      !["fromSnapshot", "positionalName", "name"].includes(key)
      && (Option.isOption(value)
        ? Option.isSome(value)
        : Array.isArray(value)
        ? value.length > 0
        : value === true)
    ).map(([key]) => key)
    if (given.length > 0) {
      return yield* new InvalidInput({
        message: `--from-snapshot takes the snapshot's workspace's configuration; other options were given (${
          given.join(", ")
        })`,
        remediation: "create it from the snapshot alone, then change what you need"
      })
    }
    const positional = options.positionalName as Option.Option<string>
    const flagged = options.name as Option.Option<string>
    const name = Option.getOrUndefined(positional) ?? Option.getOrUndefined(flagged)
    if (name === undefined) {
      return yield* new InvalidInput({
        message: "create --from-snapshot needs the new workspace's name",
        remediation: `microagent create NAME --from-snapshot ${reference}`
      })
    }
    const ref = parseSnapshotRef(reference)
    if (Either.isLeft(ref)) return yield* ref.left
    const copy = yield* clusterOr(
      // Under --cluster, the runner holding the snapshot makes the copy.
      Effect.flatMap(MicroagentClient, (client) => client.createFromSnapshot({ name, snapshot: reference })),
      withWorkspaceBackend(ref.right.workspace, createFromSnapshot(name, reference))
    )
    yield* reportCopy(copy)
  })

const createCommand = Command.make("create", {
  ...workspaceOptions,
  constraint: constraintOption,
  ...modelMediationOptions,
  imageFlag: Options.text("image").pipe(
    Options.withPseudoName("REF"),
    Options.withDescription("OCI image reference (default: the built-in busybox image)"),
    Options.optional
  ),
  entrypoint: Options.text("entrypoint").pipe(
    Options.withPseudoName("CMD"),
    Options.withDescription("shell command each start runs"),
    Options.optional
  ),
  restart: Options.choice("restart", ["never", "on-failure", "always"]).pipe(
    Options.withDescription("what `supervise` does when the VM stops"),
    Options.optional
  ),
  outputs: outputOption,
  fileCopy: fileCopyOption,
  dryRun: Options.boolean("dry-run").pipe(
    Options.withDescription("print the plan and create nothing")
  ),
  setup: setupOption,
  setupFile: setupFileOption,
  serviceCommand: serviceCommandOption,
  shell: shellOption,
  fromSnapshot: Options.text("from-snapshot").pipe(
    Options.withPseudoName("WORKSPACE:TAG"),
    Options.withDescription(
      "a new workspace from this snapshot, configured like its workspace (a memory snapshot's VM is resumed)"
    ),
    Options.optional
  ),
  positionalName: Args.text({ name: "name" }).pipe(
    Args.withDescription("workspace name (or --name; default: generated)"),
    Args.optional
  )
}, (options) =>
  Effect.gen(function*() {
    if (Option.isSome(options.fromSnapshot)) {
      return yield* createFromSnapshotCli(options, options.fromSnapshot.value)
    }
    const spec = yield* readSpec(options.file)
    const image = orUndefined(options.imageFlag) ?? spec.image ?? defaultImage
    const positional = orUndefined(options.positionalName)
    const flagged = orUndefined(options.name)
    if (positional !== undefined && flagged !== undefined && positional !== flagged) {
      return yield* new InvalidInput({
        message: `two names given: ${positional} and ${flagged}`,
        remediation: "give one"
      })
    }
    const mounts = yield* allMountsOf(spec, specDirOf(options.file), options.volume)
    const brokered = yield* brokeredSecretsOf(
      options.broker,
      yield* secretRefsOf(options.secret),
      spec,
      specDirOf(options.file)
    )
    const { swapSecrets, ...fields } = yield* workspaceFields(options, spec)
    const { brokers } = brokered
    const secrets = withSwapSecrets(brokered.secrets, swapSecrets)
    // Resolved once so that a secret that cannot be read fails now, not at the first start.
    yield* resolveSecrets(secrets ?? [])
    const files = yield* filesOf(spec, options.file, options.fileCopy)
    const setup = yield* setupOf(spec, options.file, options.setup, options.setupFile)
    const supervision = yield* supervisionOf(spec, options)
    const createOptions: CreateRequest = {
      image,
      files,
      setup,
      ...supervision,
      ...fields,
      name: positional ?? flagged ?? spec.name,
      restart: orUndefined(options.restart) ?? spec.restart,
      entrypoint: orUndefined(options.entrypoint) ?? spec.entrypoint ?? spec.agent?.entry,
      env: { ...spec.env, ...(yield* parseEnv(options.env)) },
      mounts,
      secrets,
      brokers,
      outputs: yield* allOutputsOf(spec, options.outputs)
    }
    if (options.dryRun) {
      return yield* emit(yield* withNewBackend(plan({ ...createOptions, kind: "create" })), planText)
    }
    const workspace = yield* clusterOr(
      Effect.flatMap(MicroagentClient, (client) => client.create(createOptions)),
      withNewBackend(create(createOptions))
    )
    yield* emit(workspace, describeWorkspace)
  })).pipe(Command.withDescription("create a persistent workspace from an image (state: prepared)"))

const startCommand = Command.make(
  "start",
  {
    bootTimeout: workspaceOptions.bootTimeout,
    secret: workspaceOptions.secret,
    profile: Options.choice("profile", ["tiny", "small", "medium", "large"]).pipe(
      Options.withDescription("this start only: a profile's memory and vCPUs (see `microagent profiles`)"),
      Options.optional
    ),
    memory: Options.integer("memory").pipe(
      Options.withPseudoName("MIB"),
      Options.withDescription("this start only: guest memory in MiB"),
      Options.optional
    ),
    cpus: optionalInt("cpus", "this start only: virtual CPUs"),
    ttl: ttlOption,
    fromSnapshot: Options.text("from-snapshot").pipe(
      Options.withPseudoName("TAG"),
      Options.withDescription(
        "roll back to this snapshot of the workspace first (a memory snapshot resumes instead of booting)"
      ),
      Options.optional
    ),
    wait: Options.boolean("wait").pipe(
      Options.withDescription("then block until the entrypoint has finished or the workspace settles")
    ),
    waitTimeout: optionalDuration("wait-timeout", "with --wait: give up after this long (exit 75)"),
    cold: coldOption,
    name: Args.text({ name: "name" })
  },
  (options) =>
    Effect.gen(function*() {
      if (!options.wait && Option.isSome(options.waitTimeout)) {
        return yield* new InvalidInput({
          message: "--wait-timeout needs --wait",
          remediation: `microagent start --wait --wait-timeout ${options.waitTimeout.value}s ${options.name}`
        })
      }
      const ttlSeconds = orUndefined(options.ttl)
      const workspace = yield* withRuntime(
        Effect.flatMap(MicroagentClient, (client) =>
          Effect.flatMap(secretsForStart(client, options.name, options.secret), (secrets) =>
            client.start(
              defined({
                name: options.name,
                bootTimeoutSeconds: orUndefined(options.bootTimeout),
                profile: orUndefined(options.profile),
                memoryMiB: orUndefined(options.memory),
                cpus: orUndefined(options.cpus),
                ttlSeconds,
                fromSnapshot: orUndefined(options.fromSnapshot),
                cold: options.cold || undefined,
                ...secrets
              })
            )))
      )
      yield* emit(workspace, describeWorkspace)
      if (options.wait) {
        yield* waitAndReport(options.name, { timeout: orUndefined(options.waitTimeout) })
      }
    })
).pipe(Command.withDescription("boot a workspace from its disk"))

const execCommand = Command.make("exec", {
  ...execOptions,
  stream: Options.boolean("stream").pipe(
    Options.withDescription("stream output as it comes (JSON lines when piped)")
  ),
  name: Args.text({ name: "workspace" }).pipe(Args.withDescription("a running workspace"))
}, (options) =>
  Effect.gen(function*() {
    const invocation = yield* Invocation
    const [first, ...rest] = invocation.guestArgv
    if (first === undefined) {
      return yield* new InvalidInput({
        message: "no command given",
        remediation: `microagent exec ${options.name} -- CMD [ARG...]`
      })
    }
    const env = yield* parseEnv(options.env)
    const stdin = yield* stdinBytes(options.stdin)
    const json = yield* jsonMode
    const payload: ExecCommand = defined({
      name: options.name,
      argv: [first, ...rest] as [string, ...Array<string>],
      env,
      cwd: orUndefined(options.cwd),
      user: orUndefined(options.user),
      timeoutSeconds: orUndefined(options.timeout),
      stdoutLimit: orUndefined(options.stdoutLimit),
      stderrLimit: orUndefined(options.stderrLimit),
      stdin
    })
    yield* withRuntime(Effect.gen(function*() {
      const client = yield* MicroagentClient
      if (!options.stream) {
        const result = yield* client.exec(payload)
        return yield* reportResult(result, { workspace: options.name })
      }
      yield* client.execStream(payload).pipe(Stream.runForEach((output) =>
        Effect.gen(function*() {
          if (output._tag === "Exit") {
            if (json) {
              const { stderr: _e, stdout: _o, ...rest } = output.result
              yield* writeStdout(`${JSON.stringify({ type: "exit", result: rest })}\n`)
            }
            process.exitCode = output.result.exitCode
          } else if (json) {
            const type = output._tag === "Stdout" ? "stdout" : "stderr"
            yield* writeStdout(
              `${JSON.stringify({ type, data: Buffer.from(output.data).toString("utf8") })}\n`
            )
          } else if (output._tag === "Stdout") yield* writeStdout(output.data)
          else process.stderr.write(output.data)
        })
      ))
    }))
  })).pipe(Command.withDescription("run a command (argv, no shell) in a running workspace"))

export const runGroup = [runCommand, dispatchCommand, createCommand, startCommand, execCommand] as const

/**
 * The MCP tool table: one entry per operation. The workspace tools are here; files (FileTools.ts),
 * networks and volumes (ResourceTools.ts) and the host (HostTools.ts) have files of their own. Adding
 * a tool is one more `defineTool`; `microagent.describe` and `tools/list` follow from the table.
 */
import { DateTime, Effect, Either, Option, Schema, Stream } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { parseBrokers } from "../domain/Broker.ts"
import { collectSwaps, EgressMode, EgressPolicy, EgressRecord, normalizeAllow } from "../domain/Egress.ts"
import { Conflict, InvalidInput, NotFound, toErrorBody } from "../domain/Errors.ts"
import { WorkspaceEvent } from "../domain/Event.ts"
import { ExecRequest, ExecResult } from "../domain/Exec.ts"
import { parseFileCopy } from "../domain/FileCopy.ts"
import { parseMountFlags } from "../domain/MountFlag.ts"
import { RunPlan } from "../domain/Plan.ts"
import { parsePublishes } from "../domain/Publish.ts"
import {
  CreateRequest,
  DeleteRequest,
  ExecSettings,
  HaltRequest,
  KillRequest,
  RunRequest,
  StartRequest
} from "../domain/Requests.ts"
import { mergeRefs } from "../domain/SecretRefs.ts"
import { Spec, SpecHealth, SpecResources } from "../domain/Spec.ts"
import { isDeletable, State, type Transition, transition } from "../domain/State.ts"
import { healthCheckOf } from "../domain/Supervision.ts"
import {
  Backend,
  EntrypointResult,
  NetworkMode,
  ProfileName,
  profiles,
  RestartPolicy,
  SecretRef,
  Workspace,
  WorkspaceName
} from "../domain/Workspace.ts"
import { ApplyResult } from "../programs/Apply.ts"
import { parseOutputs } from "../programs/internal/Outputs.ts"
import { QuarantineResult } from "../programs/Quarantine.ts"
import { resolveSecrets } from "../rpc/CallerSecrets.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { defined, DeleteResult, InspectResult, ProfilesResult, RunResult } from "../rpc/Rpcs.ts"
import { commitTools } from "./CommitTools.ts"
import { fileTools } from "./FileTools.ts"
import type { DenialContext } from "./HostAccess.ts"
import { hostTools } from "./HostTools.ts"
import { modelTools } from "./ModelTools.ts"
import { resourceTools } from "./ResourceTools.ts"
import { snapshotTools } from "./SnapshotTools.ts"
import {
  type AnyTool,
  defineTool,
  described,
  optional,
  type PreviewResult,
  requestInput,
  type ToolContext
} from "./Tool.ts"
import { usageTools } from "./UsageTools.ts"

const workspaceName = { name: described(Schema.String, "the workspace's name") }

/** A new workspace's settings that the tools take as the request has them. */
const workspaceSettings = requestInput(CreateRequest.fields, {
  profile: "resource profile (see microagent.profiles)",
  network: "user (default): outbound NAT; isolated: no network device",
  networks:
    "named networks to join (see network.create): a second NIC on each, members reach each other by name",
  addressing:
    "the guest's own IPv4 addressing on the user network: ip (A.B.C.D/N), subnet, gateway, dns (resolvers; "
    + 'only with egress off), routes ("A.B.C.D/N via A.B.C.D")'
})

const newWorkspace = {
  image: described(
    Schema.NonEmptyTrimmedString,
    "OCI image reference, e.g. alpine:3.20 or docker.io/library/debian:12"
  ),
  name: optional(
    WorkspaceName.annotations({ jsonSchema: { pattern: "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$" } }),
    "workspace name (default: generated); 1-63 letters, digits, '.', '_' and '-'"
  ),
  ...workspaceSettings.fields,
  memory_mib: SpecResources.fields.memoryMiB.annotations({
    description: "guest memory in MiB (default 512)"
  }),
  cpus: SpecResources.fields.cpuCount.annotations({ description: "virtual CPUs (default 2)" }),
  size_mib: SpecResources.fields.sizeMiB.annotations({
    description: "root disk size in MiB (default: image content plus headroom)"
  }),
  env: Spec.fields.env.annotations({
    description: "environment variables of every command in the workspace"
  }),
  hostname: Spec.fields.hostname.annotations({ description: "guest hostname (default: from the name)" }),
  egress: optional(
    EgressMode,
    "egress mediation: broker (default; the public internet only, never the host, loopback or private ranges), "
      + "mitm (the same reach, TLS intercepted with a per-start CA the guest trusts, for credential swaps) or off"
  ),
  egress_passthrough: optional(
    Schema.Array(Schema.String),
    "mitm: destinations allowed and never intercepted (host, .suffix or A.B.C.D[/N][:port])"
  ),
  cred_swap: optional(
    Schema.Array(Schema.String),
    "mitm: PROVIDER[=env:VAR|file:PATH] (anthropic, openai, gemini, groq, openrouter, deepseek): the provider's key "
      + "is set on requests to its API by the host; the guest never holds it (default env:<PROVIDER>_API_KEY)"
  ),
  egress_swap_config: optional(
    Schema.String,
    "mitm: a YAML/JSON file of static credential swaps: swaps.NAME {domains, header, format, key_ref}"
  ),
  egress_allow: optional(
    Schema.Array(Schema.String),
    "destinations allowed even if inside: host, .suffix (apex and subdomains) or A.B.C.D[/N], with an optional :port"
  ),
  egress_lock_allowlist: optional(
    Schema.Boolean,
    "only egress_allow destinations; other names answer REFUSED"
  ),
  egress_max_conns: optional(
    Schema.Int.pipe(Schema.nonNegative()),
    "concurrent guest connections the mediator admits (0: no cap)"
  ),
  egress_max_total_bytes: optional(
    Schema.Int.pipe(Schema.nonNegative()),
    "bytes per connection, both ways, before the mediator cuts it (0: no cap)"
  ),
  egress_max_bps: optional(
    Schema.Int.pipe(Schema.nonNegative()),
    "bytes per second each way of each connection; faster senders are slowed, not cut (0: no cap)"
  ),
  model: optional(
    Schema.String,
    "a pulled (or pullable) GGUF model the guest reaches at $OPENAI_BASE_URL (http://127.0.0.1:11434/v1) "
      + "over its guest channel, with or without a network"
  ),
  model_mediation: optional(
    Schema.Literal("off", "local-allow", "policy"),
    "how the guest's model requests are treated: off (forwarded), local-allow (audited) or policy "
      + "(decided by model_policy_file and audited; prompts are never logged)"
  ),
  model_policy_file: optional(
    Schema.String,
    "the model policy (schema microagent.model_policy.v1) for model_mediation policy: a path on the "
      + "server's host, inside its host roots"
  ),
  publish: optional(
    Schema.Array(Schema.String),
    "published ports, [hostIp:]hostPort:guestPort[/tcp] (host address default 127.0.0.1)"
  ),
  volumes: optional(
    Schema.Array(Schema.String),
    "disks, SOURCE:/guest/path[:ro|rw]: a volume name (see volume.create), a .tar/.tar.gz/.tgz bundle or an "
      + ".ext4/.img image path on the server's host, inside its host roots"
  ),
  secrets: optional(
    Schema.Array(Schema.String),
    "secrets delivered to /run/secrets/NAME (0400, tmpfs): NAME (a name the server's operator granted), or "
      + "NAME=env:VAR | file:PATH | dotenv:PATH[:KEY] where the operator allows that variable or path "
      + "(see hostAccess in microagent.describe); resolved by the MCP server at every start; only "
      + "references are recorded"
  ),
  brokers: optional(
    Schema.Array(Schema.String),
    "credential broker endpoints, 'upstream=URL;secret=NAME=env:VAR;base-url-env=KEY' each: endpoint N is "
      + "http://127.0.0.1:18888+N in the guest, which sends @secret:NAME where the credential goes; the "
      + "value stays on the host (secret references and ca= paths as allowed for secrets, see hostAccess); "
      + "'assurance=semantic;grant=PATH' lets through only the grant file's operations and the answers they allow"
  ),
  outputs: optional(
    Schema.Array(Schema.String),
    "declared outputs, NAME=/guest/path: collected after a run's command, fetched with artifacts.get"
  ),
  backend: optional(Backend, "backend of the new workspace (default: the server's)"),
  refuse_devices: optional(
    Schema.Boolean,
    "refuse an image whose layers hold character or block devices (accepted by default: created only in the guest's disk)"
  )
}

/** How a command runs (`exec`, and `run`'s command). */
const execSettings = requestInput(ExecSettings.fields, {
  env: "environment variables, over the image's and the workspace's",
  cwd: "working directory in the guest (default: the image's)",
  user: "user, name or uid[:gid] (default: the image's)",
  timeoutSeconds: "seconds before the command is stopped (TERM, then KILL); the result says timed_out",
  stdoutLimit: "bytes of stdout kept (default 10 MiB)",
  stderrLimit: "bytes of stderr kept (default 10 MiB)"
})

const execFields = {
  ...execSettings.fields,
  stdin: optional(Schema.String, "text fed to the command's stdin (closed at once when absent)")
}

const encoder = new TextEncoder()
const stdinOf = (text: string | undefined) => (text === undefined ? {} : { stdin: encoder.encode(text) })

type NewWorkspaceArgs = Schema.Struct.Type<typeof newWorkspace>

/**
 * Host paths among `volumes` are checked before the mount parser looks at them at all, so that its
 * answers ("not a file", "a directory") say nothing about paths outside the roots. The client then
 * checks each mount again, for the access it needs (Confined.ts).
 */
const checkVolumeSources = (volumes: ReadonlyArray<string>, context: ToolContext, denial: DenialContext) =>
  Effect.forEach(volumes, (text) => {
    const rest = text.replace(/:(ro|rw)$/, "")
    const at = rest.lastIndexOf(":/")
    const source = at > 0 ? rest.slice(0, at) : rest
    const isPath = /[/.~]/.test(source)
    return isPath ? Effect.asVoid(context.host.check(source, "read", denial)) : Effect.void
  }, { discard: true })

/**
 * Broker endpoints from their texts: the broker-held references pass the same host-access checks as
 * secrets (a file: or dotenv: path inside the roots, an env: variable the operator allows), and so
 * does each ca= bundle.
 */
const brokersOf = (texts: ReadonlyArray<string>, context: ToolContext, denial: DenialContext) =>
  Effect.gen(function*() {
    // A grant file is read while the endpoint is parsed: only once the policy allowed it.
    const grants = new Map<string, string>()
    for (const text of texts) {
      for (const field of text.split(";").map((f) => f.trim()).filter((f) => f.startsWith("grant="))) {
        const path = NodePath.resolve(process.cwd(), field.slice("grant=".length))
        grants.set(path, yield* context.host.check(path, "read", denial))
      }
    }
    const parsed = yield* parseBrokers(texts, process.cwd(), (path) => {
      const confined = grants.get(path)
      if (confined === undefined) throw new Error("not a path the host-access policy checked")
      return NodeFs.readFileSync(confined, "utf8")
    })
    for (const endpoint of parsed.endpoints) {
      if (endpoint.ca !== undefined) yield* context.host.check(endpoint.ca, "read", denial)
    }
    const checked = yield* context.host.checkRefs(parsed.secrets, denial)
    return {
      endpoints: parsed.endpoints,
      secrets: checked.map((ref) => new SecretRef({ name: ref.name, source: ref.source, use: "broker" }))
    }
  })

/**
 * The credential swaps of `cred_swap` and `egress_swap_config`, with the host-held secrets they read;
 * the file and each reference pass the host-access checks as secrets do.
 */
const swapsOf = (args: NewWorkspaceArgs, context: ToolContext, denial: DenialContext) =>
  Effect.gen(function*() {
    let config: { text: string; source: string } | undefined
    if (args.egress_swap_config !== undefined) {
      yield* context.host.check(args.egress_swap_config, "read", denial)
      const path = args.egress_swap_config
      const text = yield* Effect.try({
        try: () => NodeFs.readFileSync(path, "utf8"),
        catch: (cause) =>
          new InvalidInput({
            message: `egress_swap_config ${path}: ${cause instanceof Error ? cause.message : String(cause)}`
          })
      })
      config = { text, source: path }
    }
    const unique = yield* collectSwaps(args.cred_swap ?? [], config)
    const checked = yield* context.host.checkRefs(
      unique.map((s) => new SecretRef({ name: s.secret.name, source: s.secret.source })),
      denial
    )
    return {
      swaps: unique.map((s) => s.swap),
      secrets: checked.map((ref) => new SecretRef({ name: ref.name, source: ref.source, use: "broker" }))
    }
  })

/**
 * The fields of a new workspace, from a tool's arguments: ports, mounts and secret references parsed
 * as the CLI parses its flags (relative paths from the server's working directory).
 */
const newWorkspaceFields = (args: NewWorkspaceArgs, context: ToolContext, tool: string) =>
  Effect.gen(function*() {
    const cwd = process.cwd()
    const ports = args.publish === undefined ? undefined : yield* parsePublishes(args.publish)
    if (args.volumes !== undefined) {
      yield* checkVolumeSources(args.volumes, context, { tool, workspace: args.name })
    }
    const mounts = args.volumes === undefined ? undefined : yield* parseMountFlags(args.volumes, cwd)
    const secrets = args.secrets === undefined
      ? undefined
      : yield* context.host.secretRefs(args.secrets, { tool, workspace: args.name })
    const outputs = args.outputs === undefined ? undefined : yield* parseOutputs(args.outputs)
    const brokered = args.brokers === undefined || args.brokers.length === 0
      ? undefined
      : yield* brokersOf(args.brokers, context, { tool, workspace: args.name })
    const swapped = yield* swapsOf(args, context, { tool, workspace: args.name })
    return {
      image: args.image,
      name: args.name,
      ...workspaceSettings.from(args),
      memoryMiB: args.memory_mib,
      cpus: args.cpus,
      sizeMiB: args.size_mib,
      env: args.env,
      hostname: args.hostname,
      egress: new EgressPolicy({
        mode: args.egress ?? "broker",
        allow: [...new Set((args.egress_allow ?? []).map(normalizeAllow))],
        lockAllowlist: args.egress_lock_allowlist ?? false,
        passthrough: [...new Set((args.egress_passthrough ?? []).map(normalizeAllow))],
        swaps: swapped.swaps,
        ...(args.egress_max_conns === undefined ? {} : { maxConns: args.egress_max_conns }),
        ...(args.egress_max_total_bytes === undefined ? {} : { maxTotalBytes: args.egress_max_total_bytes }),
        ...(args.egress_max_bps === undefined ? {} : { maxBps: args.egress_max_bps })
      }),
      ...(args.model === undefined ? {} : {
        model: {
          model: args.model,
          ...(args.model_mediation === undefined ? {} : { mediation: args.model_mediation }),
          ...(args.model_policy_file === undefined ? {} : { policyFile: args.model_policy_file })
        }
      }),
      ports,
      mounts,
      secrets: brokered === undefined && swapped.secrets.length === 0
        ? secrets
        : [...(secrets ?? []), ...(brokered?.secrets ?? []), ...swapped.secrets],
      ...(brokered === undefined ? {} : { brokers: brokered.endpoints }),
      outputs,
      backend: args.backend ?? context.defaultBackend,
      ...(args.refuse_devices === true ? { refuseDevices: true } : {})
    }
  })

const WorkspaceSummary = Schema.Struct({
  name: Schema.String,
  state: State,
  /** In a cluster: the runner that holds it. */
  host: Schema.optional(Schema.String),
  backend: Backend,
  profile: Schema.optional(ProfileName),
  image: Schema.String,
  network: NetworkMode,
  createdAt: Schema.String
})

const ListResult = Schema.Struct({ workspaces: Schema.Array(WorkspaceSummary) })

const LogsResult = Schema.Struct({
  workspace: Schema.String,
  logs: Schema.String,
  /** Whether earlier lines were left out (`tail_lines`). */
  truncated: Schema.Boolean
})

const EgressResult = Schema.Struct({
  workspace: Schema.String,
  records: Schema.Array(EgressRecord),
  /** Pass as `after` to get only newer records. */
  next: Schema.Int
})

const EventsResult = Schema.Struct({
  workspace: Schema.String,
  events: Schema.Array(WorkspaceEvent),
  /** Pass as `after_id` to get only newer events. */
  nextAfterId: Schema.Int
})

const WaitResult = Schema.Struct({ workspace: Schema.String, state: State, ok: Schema.Boolean })

/** The workspace's current state, or none when it does not exist. */
const currentState = (name: string) =>
  Effect.flatMap(MicroagentClient, (client) => client.inspect({ name })).pipe(
    Effect.map((report) => Option.some(report.workspace.state)),
    Effect.catchTag("NotFound", () => Effect.succeed(Option.none<State>()))
  )

/** A preview of a state-machine transition: the actions, or why it would be refused. */
const transitionPreview = (name: string, t: Transition, action: (state: State) => ReadonlyArray<string>) =>
  Effect.map(currentState(name), (state): PreviewResult => {
    if (Option.isNone(state)) {
      return {
        preview: true,
        workspace: name,
        actions: [],
        // As the call itself would fail.
        wouldFail: toErrorBody(
          new NotFound({
            message: `workspace ${name} not found`,
            remediation: "`microagent list` shows the workspaces of this state directory"
          })
        )
      }
    }
    const next = transition(name, state.value, t)
    return Either.isLeft(next)
      ? { preview: true, workspace: name, state: state.value, actions: [], wouldFail: toErrorBody(next.left) }
      : { preview: true, workspace: name, state: state.value, actions: action(state.value) }
  })

export const describeTool = "microagent.describe"

const coldDescription =
  "boot even when a warm start is possible (a first start on the image's disk otherwise restores a saved template VM)"

const bootTimeoutDescription = "seconds to wait for the guest (default 60)"

/** A one-shot run's own settings. */
const runSettings = requestInput(RunRequest.fields, {
  setup:
    "shell commands run in order in the same boot, before the command; a failing one fails the call with its output",
  keep: "keep the workspace, halted, instead of deleting it",
  bootTimeoutSeconds: bootTimeoutDescription,
  cold: coldDescription
})

/** `workspace.run` and `workspace.dispatch`: one input, one call; dispatch asks for the receipt too. */
const oneShotTool = (name: "workspace.run" | "workspace.dispatch") =>
  defineTool({
    name,
    title: name === "workspace.run"
      ? "Run a command in a fresh workspace"
      : "Run a command in a fresh workspace, with an egress receipt",
    description: "Create a one-shot workspace from an image, boot it, run one command, and delete it "
      + "(or keep it halted with keep: true). A non-zero exit is a result, not an error."
      + (name === "workspace.run"
        ? ""
        : " The result carries a receipt of the run's network activity (allowed and denied destinations, "
          + "bytes, signals), summed from the egress mediator's audit log."),
    input: {
      ...newWorkspace,
      command: optional(
        Schema.Array(Schema.String),
        "the command and its arguments, run without a shell (default: the image's Entrypoint and Cmd)"
      ),
      ...execFields,
      ...runSettings.fields,
      dry_run: optional(
        Schema.Boolean,
        "answer the plan (image and its digest if already pulled, kernel, resources, mounts, network, setup, "
          + "command) without pulling, booting or writing anything"
      )
    },
    output: Schema.Union(RunResult, RunPlan),
    kind: "mutate",
    sideEffects: [
      "creates a workspace and its disk",
      "boots a VM",
      "runs the command",
      "deletes the workspace unless keep"
    ],
    cost: "host_compute_and_storage",
    run: (args, context) =>
      Effect.gen(function*() {
        const client = yield* MicroagentClient
        const fields = yield* newWorkspaceFields(args, context, name)
        const secretValues = yield* resolveSecrets(fields.secrets ?? [])
        if (args.dry_run === true) {
          return yield* client.plan(
            defined({ ...fields, kind: "run" as const, command: args.command ?? [], setup: args.setup })
          )
        }
        return yield* client.run(defined({
          ...execSettings.from(args),
          ...fields,
          secretValues,
          command: args.command ?? [],
          ...runSettings.from(args),
          ...stdinOf(args.stdin),
          ...(name === "workspace.dispatch" ? { receipt: true, namePrefix: "dispatch" } : {})
        }))
      })
  })

/** What a persistent workspace keeps and runs, as the request has it. */
const createSettings = requestInput(CreateRequest.fields, {
  restart: "restart policy (default never)",
  entrypoint: "shell command each start runs",
  setup:
    "shell commands run once, in order, before the first start's entrypoint; a failing one fails that start and is retried by the next",
  service:
    "shell command the guest keeps running, restarted with back-off (1 s doubling to 30 s, reset after 30 s up)",
  shell: "absolute guest path of the shell workspace.connect runs (default /bin/sh)"
})

const startSettings = requestInput(StartRequest.fields, {
  bootTimeoutSeconds: bootTimeoutDescription,
  cold: coldDescription
})

const startSnapshot = requestInput(StartRequest.fields, {
  fromSnapshot:
    "roll back to this snapshot tag of the workspace first: its disk replaces the workspace's, and a "
    + "memory snapshot resumes the captured VM (processes, tmpfs) instead of booting"
})

const haltSettings = requestInput(HaltRequest.fields, {
  timeoutSeconds: "seconds the guest gets (default 15)",
  reason: "recorded in the workspace's events"
})

const deleteSettings = requestInput(DeleteRequest.fields, { force: "kill a live workspace first" })

const reasonInput = requestInput(KillRequest.fields, { reason: "recorded in the workspace's events" })

export const tools: ReadonlyArray<AnyTool> = [
  oneShotTool("workspace.run"),
  oneShotTool("workspace.dispatch"),
  defineTool({
    name: "workspace.create",
    title: "Create a workspace",
    description: "Create a persistent workspace from an image, with its own root disk; it is `prepared` "
      + "until workspace.start boots it. With from_snapshot (WORKSPACE:TAG) instead of image, its disk is "
      + "that snapshot's and its configuration that workspace's, with its own identity; from a memory "
      + "snapshot its first workspace.start resumes the captured VM (processes, tmpfs), else it boots.",
    input: {
      ...newWorkspace,
      image: optional(
        Schema.NonEmptyTrimmedString,
        "OCI image reference, e.g. alpine:3.20 or docker.io/library/debian:12 (required unless from_snapshot)"
      ),
      from_snapshot: optional(
        Schema.String,
        "WORKSPACE:TAG: the new workspace's disk is this snapshot's, its configuration that workspace's; "
          + "only name may be given with it"
      ),
      ...createSettings.fields,
      files: optional(
        Schema.Array(Schema.String),
        "host files copied into the guest at every start, before the entrypoint: SRC:DST[:MODE], SRC an absolute "
          + "host path under the host roots, DST an absolute guest path named once, MODE octal like 0755"
      ),
      dry_run: optional(
        Schema.Boolean,
        "answer the plan (image and its digest if already pulled, kernel, resources, network, setup, files, "
          + "entrypoint) without pulling or creating anything"
      ),
      health: optional(
        SpecHealth,
        "health check: exec (argv, healthy on exit 0) or httpGet (path) with port (a published guest port); "
          + "intervalSeconds (30), timeoutSeconds (5), retries (3), startPeriodSeconds (0); after retries failures "
          + "in a row the VM is killed and the workspace is failed"
      )
    },
    output: Schema.Union(Workspace, RunPlan),
    kind: "mutate",
    sideEffects: ["pulls the image if missing", "creates a workspace record and its disk"],
    cost: "host_compute_and_storage",
    run: (args, context) =>
      Effect.gen(function*() {
        const client = yield* MicroagentClient
        if (args.from_snapshot !== undefined) {
          const { from_snapshot, name, ...rest } = args
          const others = Object.entries(rest).filter(([, value]) => value !== undefined).map(([key]) => key)
          if (others.length > 0 || name === undefined) {
            return yield* new InvalidInput({
              message: name === undefined
                ? "from_snapshot needs the new workspace's name"
                : `from_snapshot takes the snapshot's workspace's configuration; other fields were given (${
                  others.join(", ")
                })`,
              remediation: "give only name and from_snapshot"
            })
          }
          const copy = yield* client.createFromSnapshot({ name, snapshot: from_snapshot })
          return copy.workspace
        }
        if (args.image === undefined) {
          return yield* new InvalidInput({
            message: "workspace.create needs image (or from_snapshot)",
            remediation: "give an OCI image reference, e.g. alpine:3.20"
          })
        }
        const fields = yield* newWorkspaceFields({ ...args, image: args.image }, context, "workspace.create")
        // Resolved once, so that a secret the server cannot read fails now rather than at the first start.
        yield* resolveSecrets(fields.secrets ?? [])
        const files = args.files === undefined
          ? undefined
          : yield* Effect.forEach(args.files, (text) =>
            text.startsWith("/")
              ? parseFileCopy(text, "/")
              : Effect.fail(
                new InvalidInput({
                  message: `files: ${JSON.stringify(text)}: the source must be an absolute host path`,
                  remediation: "give SRC:DST[:MODE] with an absolute SRC"
                })
              ))
        const health = args.health === undefined ? undefined : healthCheckOf(args.health)
        if (health !== undefined && Either.isLeft(health)) {
          return yield* new InvalidInput({
            message: health.left,
            remediation: "see docs/agents.md for the health fields"
          })
        }
        const payload = defined({ ...fields, ...createSettings.from(args), files, health: health?.right })
        return yield* args.dry_run === true
          ? client.plan({ ...payload, kind: "create" })
          : client.create(payload)
      })
  }),
  defineTool({
    name: "workspace.start",
    title: "Boot a workspace",
    description: "Boot a prepared, halted, stopped or failed workspace from its disk and wait for its guest.",
    input: {
      ...workspaceName,
      ...startSettings.fields,
      secrets: optional(
        Schema.Array(Schema.String),
        "secret references to add or replace (NAME=SOURCE); every recorded reference is resolved again, "
          + "in the MCP server's environment, and delivered"
      ),
      ...startSnapshot.fields
    },
    output: Workspace,
    kind: "mutate",
    sideEffects: ["boots a VM", "delivers the workspace's secrets to its tmpfs"],
    cost: "host_compute_and_storage",
    run: (args, context) =>
      Effect.gen(function*() {
        const client = yield* MicroagentClient
        const denial = { tool: "workspace.start", workspace: args.name }
        const given = args.secrets === undefined
          ? undefined
          : yield* context.host.secretRefs(args.secrets, denial)
        // Every reference the workspace will have is resolved here, so each must still be allowed.
        const { workspace } = yield* client.inspect({ name: args.name })
        const all = yield* context.host.checkRefs(mergeRefs(workspace.secrets, given ?? []), denial)
        const secretValues = yield* resolveSecrets(all)
        return yield* client.start(
          defined({
            name: args.name,
            ...startSettings.from(args),
            secrets: given,
            secretValues,
            ...startSnapshot.from(args)
          })
        )
      })
  }),
  defineTool({
    name: "workspace.exec",
    title: "Run a command in a running workspace",
    description: 'Run a command (argv, no shell; use ["sh", "-c", "..."] for one) in a running workspace '
      + "and return its exit status and output. A non-zero exit is a result, not an error.",
    input: {
      ...workspaceName,
      argv: described(ExecRequest.fields.argv, "the command and its arguments"),
      ...execFields
    },
    output: ExecResult,
    kind: "mutate",
    sideEffects: ["runs a command in the guest"],
    cost: "host_compute_and_storage",
    run: (args) =>
      Effect.flatMap(
        MicroagentClient,
        (client) =>
          client.exec({
            name: args.name,
            argv: args.argv,
            ...execSettings.from(args),
            ...stdinOf(args.stdin)
          })
      )
  }),
  defineTool({
    name: "workspace.halt",
    title: "Halt a workspace",
    description: "Shut a running workspace down gracefully; the VM is killed if the guest has not powered "
      + "off in time. The disk is kept; workspace.start boots it again.",
    input: {
      ...workspaceName,
      ...haltSettings.fields
    },
    output: Workspace,
    kind: "destructive",
    sideEffects: ["stops the VM (processes in the guest end)"],
    cost: "host_io",
    run: (args) =>
      Effect.flatMap(
        MicroagentClient,
        (client) => client.halt({ name: args.name, ...haltSettings.from(args) })
      ),
    preview: (args) =>
      transitionPreview(args.name, "halt", (state) => [
        `ask the guest of ${args.name} (${state}) to power off`,
        `kill its VM if it is still running after ${args.timeout_seconds ?? 15} s`,
        `record ${args.name} as halted (its disk is kept)`
      ])
  }),
  defineTool({
    name: "workspace.pause",
    title: "Pause a workspace",
    description:
      "Freeze a running workspace's vCPUs. Memory, disk and network are kept; exec, connect and cp "
      + "are refused until workspace.resume. Pausing a paused workspace changes nothing.",
    input: { ...workspaceName, ...reasonInput.fields },
    output: Workspace,
    kind: "mutate",
    sideEffects: ["freezes the guest (its clocks stop; connections may time out)"],
    cost: "host_io",
    run: (args) =>
      Effect.flatMap(
        MicroagentClient,
        (client) => client.pause({ name: args.name, ...reasonInput.from(args) })
      )
  }),
  defineTool({
    name: "workspace.resume",
    title: "Resume a workspace",
    description:
      "Let a paused workspace run on where it stopped. Resuming a running workspace changes nothing.",
    input: { ...workspaceName, ...reasonInput.fields },
    output: Workspace,
    kind: "mutate",
    sideEffects: ["the guest runs again"],
    cost: "host_io",
    run: (args) =>
      Effect.flatMap(
        MicroagentClient,
        (client) => client.resume({ name: args.name, ...reasonInput.from(args) })
      )
  }),
  defineTool({
    name: "workspace.kill",
    title: "Kill a workspace",
    description: "Stop a workspace's VM at once, without a guest shutdown. The disk is kept.",
    input: { ...workspaceName, ...reasonInput.fields },
    output: Workspace,
    kind: "destructive",
    sideEffects: ["kills the VM (unsynced guest writes may be lost)"],
    cost: "host_io",
    run: (args) =>
      Effect.flatMap(
        MicroagentClient,
        (client) => client.kill({ name: args.name, ...reasonInput.from(args) })
      ),
    preview: (args) =>
      transitionPreview(args.name, "kill", (state) => [
        `kill the VM of ${args.name} (${state}) at once`,
        `record ${args.name} as stopped (its disk is kept)`
      ])
  }),
  defineTool({
    name: "workspace.quarantine",
    title: "Quarantine a workspace",
    description: "Contain a running or paused workspace: cut its network, freeze its vCPUs, capture its "
      + "console, events, egress log, memory and disk into a custody record, and stop it. Start is refused "
      + "afterwards; workspace.delete needs force to remove it.",
    input: {
      ...workspaceName,
      reason: described(Schema.NonEmptyTrimmedString, "why: recorded in the events and the custody record"),
      no_capture: optional(Schema.Boolean, "keep only the logs: no memory or disk capture")
    },
    output: QuarantineResult,
    kind: "destructive",
    sideEffects: ["cuts the network and stops the VM", "writes a custody record beside the workspace"],
    cost: "host_io",
    run: (args) =>
      Effect.flatMap(MicroagentClient, (client) =>
        client.quarantine(defined({
          name: args.name,
          reason: args.reason,
          capture: args.no_capture === true ? false : undefined
        }))),
    preview: (args) =>
      transitionPreview(args.name, "quarantine", (state) => [
        `cut the network of ${args.name} (${state}) and freeze its vCPUs`,
        args.no_capture === true
          ? "capture its console, events and egress log"
          : "capture its console, events, egress log, memory and disk",
        `stop its VM and record ${args.name} as quarantined (start refused afterwards)`
      ])
  }),
  defineTool({
    name: "workspace.delete",
    title: "Delete a workspace",
    description: "Delete a workspace, its disk and its record. Idempotent: deleting what is not there "
      + "answers deleted: false. A live workspace needs force: true (it is killed first).",
    input: {
      ...workspaceName,
      ...deleteSettings.fields
    },
    output: DeleteResult,
    kind: "destructive",
    sideEffects: ["deletes the workspace's disk and record", "kills its VM with force"],
    cost: "host_io",
    run: (args) =>
      Effect.flatMap(
        MicroagentClient,
        (client) => client.delete({ name: args.name, ...deleteSettings.from(args) })
      ),
    preview: (args) =>
      Effect.map(currentState(args.name), (state): PreviewResult => {
        if (Option.isNone(state)) return { preview: true, workspace: args.name, actions: [] }
        const remove = `delete the disk and record of ${args.name}`
        if (isDeletable(state.value)) {
          return { preview: true, workspace: args.name, state: state.value, actions: [remove] }
        }
        if (args.force) {
          return {
            preview: true,
            workspace: args.name,
            state: state.value,
            actions: [`kill the VM of ${args.name} (${state.value})`, remove]
          }
        }
        return {
          preview: true,
          workspace: args.name,
          state: state.value,
          actions: [],
          wouldFail: toErrorBody(
            new Conflict({
              message: `workspace ${args.name} is ${state.value}`,
              remediation: "pass force: true to kill it first, or halt it with workspace.halt"
            })
          )
        }
      })
  }),
  defineTool({
    name: "workspace.inspect",
    title: "Inspect a workspace",
    description: "A workspace's record (state, image, resources, backend) and its last event.",
    input: workspaceName,
    output: InspectResult,
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: (args) => Effect.flatMap(MicroagentClient, (client) => client.inspect({ name: args.name }))
  }),
  defineTool({
    name: "workspace.list",
    title: "List workspaces",
    description:
      "Every workspace of this state directory (or of the cluster, with the runner holding each), with its state.",
    input: { running_only: optional(Schema.Boolean, "only workspaces whose VM is live") },
    output: ListResult,
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: (args) =>
      Effect.flatMap(MicroagentClient, (client) => client.list(defined({ runningOnly: args.running_only })))
        .pipe(
          Effect.map((all) => ({
            workspaces: all.map((ws) => ({
              name: ws.name,
              state: ws.state,
              ...(ws.host === undefined ? {} : { host: ws.host }),
              backend: ws.backend,
              ...(ws.profile === undefined ? {} : { profile: ws.profile }),
              image: ws.image.ref,
              network: ws.network,
              createdAt: DateTime.formatIso(ws.createdAt)
            }))
          }))
        )
  }),
  defineTool({
    name: "workspace.logs",
    title: "Read a workspace's console log",
    description: "The serial console log of a workspace's current or last boot.",
    input: {
      ...workspaceName,
      tail_lines: optional(Schema.Int.pipe(Schema.positive()), "only the last this many lines")
    },
    output: LogsResult,
    kind: "read",
    sideEffects: [],
    cost: "host_io",
    run: (args) =>
      Effect.flatMap(MicroagentClient, (client) => Stream.runCollect(client.logs({ name: args.name }))).pipe(
        Effect.map((chunks) => {
          const text = Buffer.concat([...chunks]).toString("utf8")
          if (args.tail_lines === undefined) return { workspace: args.name, logs: text, truncated: false }
          const lines = text.split("\n")
          const last = text.endsWith("\n") ? lines.slice(0, -1) : lines
          const kept = last.slice(-args.tail_lines)
          return {
            workspace: args.name,
            logs: kept.join("\n") + (text.endsWith("\n") && kept.length > 0 ? "\n" : ""),
            truncated: kept.length < last.length
          }
        })
      )
  }),
  defineTool({
    name: "workspace.egress",
    title: "Read a workspace's egress audit log",
    description:
      "Allowed and denied network flows and DNS answers of a workspace, oldest first (records egress_allow, "
      + "egress_close, egress_deny, egress_internal_deny, egress_dns_allow, egress_dns_deny, egress_udp_deny, …). "
      + "Poll with after = the previous call's next.",
    input: {
      ...workspaceName,
      after: optional(Schema.Int.pipe(Schema.nonNegative()), "skip this many records (default 0)"),
      limit: optional(Schema.Int.pipe(Schema.between(1, 1024)), "at most this many records (default 100)")
    },
    output: EgressResult,
    kind: "read",
    sideEffects: [],
    cost: "host_io",
    run: (args) =>
      Effect.flatMap(MicroagentClient, (client) => Stream.runCollect(client.egress({ name: args.name })))
        .pipe(
          Effect.map((all) => {
            const after = args.after ?? 0
            const records = [...all].slice(after, after + (args.limit ?? 100))
            return { workspace: args.name, records, next: after + records.length }
          })
        )
  }),
  defineTool({
    name: "workspace.events",
    title: "Read a workspace's lifecycle events",
    description: "Lifecycle events, oldest first. Poll with after_id = the previous call's nextAfterId.",
    input: {
      ...workspaceName,
      after_id: optional(Schema.Int.pipe(Schema.nonNegative()), "only events after this id"),
      limit: optional(Schema.Int.pipe(Schema.between(1, 1024)), "at most this many events (default 100)")
    },
    output: EventsResult,
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: (args) =>
      Effect.flatMap(MicroagentClient, (client) => Stream.runCollect(client.events({ name: args.name })))
        .pipe(
          Effect.map((all) => {
            const after = args.after_id ?? 0
            const events = [...all].filter((event) => event.id > after).slice(0, args.limit ?? 100)
            return { workspace: args.name, events, nextAfterId: events.at(-1)?.id ?? after }
          })
        )
  }),
  defineTool({
    name: "workspace.wait",
    title: "Wait for a workspace to settle",
    description: "Block until a workspace is prepared, halted, stopped, failed or quarantined. Running out "
      + "of time is a retryable (transient) error.",
    input: {
      ...workspaceName,
      timeout_seconds: optional(
        Schema.Number.pipe(Schema.positive()),
        "give up after this many seconds (default 60)"
      ),
      interval_seconds: optional(
        Schema.Number.pipe(Schema.positive()),
        "how often to look, in seconds (default 0.25)"
      )
    },
    output: WaitResult,
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: (args) =>
      Effect.flatMap(
        MicroagentClient,
        (client) =>
          client.wait(defined({
            name: args.name,
            timeoutSeconds: args.timeout_seconds ?? 60,
            intervalSeconds: args.interval_seconds
          }))
      ).pipe(
        Effect.map((ws) => ({
          workspace: ws.name,
          state: ws.state,
          ok: ws.state !== "failed" && ws.state !== "quarantined"
        }))
      )
  }),
  defineTool({
    name: "workspace.result",
    title: "The result of a workspace's entrypoint",
    description: "The outcome of the entrypoint the latest start ran: status (running, exited, start_failed, "
      + "lost), exit code, stdout and stderr (1 MiB each, truncation flagged), startError when it never ran, "
      + "and its times. With wait, blocks until it has finished; running out of time is transient. A "
      + "workspace that has not run an entrypoint is not_found.",
    input: {
      ...workspaceName,
      wait: optional(Schema.Boolean, "block until the entrypoint has finished"),
      timeout_seconds: optional(
        Schema.Number.pipe(Schema.positive()),
        "with wait: give up after this many seconds (default 60)"
      )
    },
    output: EntrypointResult,
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: (args) =>
      Effect.flatMap(MicroagentClient, (client) =>
        client.result(defined({
          name: args.name,
          wait: args.wait,
          timeoutSeconds: args.wait === true ? args.timeout_seconds ?? 60 : undefined
        })))
  }),
  defineTool({
    name: "workspace.apply",
    title: "Change a workspace to match a spec",
    description:
      "Bring an existing workspace's record in line with the given fields (those left out are kept), "
      + "without a rebuild. Entrypoint, env, files, setup (a changed setup runs again), outputs, restart, egress, "
      + "hostname, memory and vCPUs are recorded now and take effect at the next start; network, publish and "
      + "volumes only while it is not running; image, size_mib and name are refused. Any refused field refuses "
      + "the call (conflict, naming each) and nothing is written. Identical values: changed false.",
    input: {
      ...workspaceName,
      image: optional(Schema.String, "the image it was created from (a different one is refused)"),
      profile: newWorkspace.profile,
      memory_mib: newWorkspace.memory_mib,
      cpus: newWorkspace.cpus,
      size_mib: newWorkspace.size_mib,
      env: newWorkspace.env,
      hostname: newWorkspace.hostname,
      network: newWorkspace.network,
      egress: newWorkspace.egress,
      egress_allow: newWorkspace.egress_allow,
      egress_lock_allowlist: newWorkspace.egress_lock_allowlist,
      publish: newWorkspace.publish,
      volumes: newWorkspace.volumes,
      outputs: newWorkspace.outputs,
      restart: optional(RestartPolicy, "restart policy"),
      entrypoint: optional(Schema.String, "shell command each start runs; empty: none"),
      files: optional(
        Schema.Array(Schema.String),
        "host files copied in at every start, SRC:DST[:MODE] with SRC an absolute host path under the host roots"
      ),
      setup: optional(
        Schema.Array(Schema.String),
        "setup commands; a changed list runs again at the next start"
      ),
      dry_run: optional(Schema.Boolean, "answer the changes without writing them")
    },
    output: ApplyResult,
    kind: "mutate",
    sideEffects: ["changes the workspace's record (seen by the guest at its next start)"],
    cost: "metadata",
    run: (args, context) =>
      Effect.gen(function*() {
        const client = yield* MicroagentClient
        const tool = "workspace.apply"
        if (args.volumes !== undefined) {
          yield* checkVolumeSources(args.volumes, context, { tool, workspace: args.name })
        }
        const egressGiven = args.egress !== undefined || args.egress_allow !== undefined
          || args.egress_lock_allowlist !== undefined
        const files = args.files === undefined
          ? undefined
          : yield* Effect.forEach(args.files, (text) =>
            text.startsWith("/")
              ? parseFileCopy(text, "/")
              : Effect.fail(
                new InvalidInput({
                  message: `files: ${JSON.stringify(text)}: the source must be an absolute host path`,
                  remediation: "give SRC:DST[:MODE] with an absolute SRC"
                })
              ))
        return yield* client.apply(defined({
          name: args.name,
          dryRun: args.dry_run,
          image: args.image,
          profile: args.profile,
          memoryMiB: args.memory_mib,
          cpus: args.cpus,
          sizeMiB: args.size_mib,
          env: args.env,
          hostname: args.hostname,
          network: args.network,
          restart: args.restart,
          entrypoint: args.entrypoint,
          setup: args.setup,
          files,
          ports: args.publish === undefined ? undefined : yield* parsePublishes(args.publish),
          mounts: args.volumes === undefined
            ? undefined
            : yield* parseMountFlags(args.volumes, process.cwd()),
          outputs: args.outputs === undefined ? undefined : yield* parseOutputs(args.outputs),
          egress: egressGiven
            ? new EgressPolicy({
              mode: args.egress ?? "broker",
              allow: [...new Set((args.egress_allow ?? []).map(normalizeAllow))],
              lockAllowlist: args.egress_lock_allowlist ?? false
            })
            : undefined
        }))
      })
  }),
  defineTool({
    name: "microagent.profiles",
    title: "Resource profiles",
    description: "The resource profiles a workspace can be created with (memory, vCPUs, disk).",
    input: {},
    output: ProfilesResult,
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: () => Effect.succeed({ profiles })
  }),
  ...fileTools,
  ...resourceTools,
  ...snapshotTools,
  ...usageTools,
  ...commitTools,
  ...hostTools,
  ...modelTools
]

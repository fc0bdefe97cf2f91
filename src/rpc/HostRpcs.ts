/**
 * The host-level procedures of the RPC API: the image store, the model store, the kernel cache and the
 * host check. They
 * touch no VM, but they run in the runtime like everything else, so the MCP server and host
 * applications reach them over the same socket.
 */
import { Rpc } from "@effect/rpc"
import { Schema } from "effect"
import { MicroagentError } from "../domain/Errors.ts"
import { TemplateEntry, TemplatesPruned } from "../domain/Template.ts"
import { PushResult } from "../programs/Image.ts"
import { StateBackup, StateCheckResult } from "../programs/State.ts"
import { ImageRecord } from "../services/ImageStore.ts"
import { KernelEntry, VerifyResultSchema } from "../services/KernelCache.ts"
import { RunnerRecord } from "../services/ModelRunners.ts"
import { ModelRecord } from "../services/Models.ts"
import { RegistryLogin } from "../services/Registry.ts"

export const ImagePullPayload = Schema.Struct({
  ref: Schema.String,
  /** `linux/amd64`, `linux/arm64/v8`…; default the host's. */
  platform: Schema.optional(Schema.String),
  /** Resolve the reference again even when it is recorded. */
  refresh: Schema.optional(Schema.Boolean),
  /** Plain http to a registry that is not on loopback. */
  insecureRegistry: Schema.optional(Schema.Boolean),
  allowGuestSetuid: Schema.optional(Schema.Boolean),
  /** Refuse layers holding character or block devices (accepted by default). */
  refuseDevices: Schema.optional(Schema.Boolean),
  /** The baseline disk's size in MiB (default: the content and some room). */
  baselineSizeMiB: Schema.optional(Schema.Int.pipe(Schema.positive()))
})

export type ImagePullRequest = typeof ImagePullPayload.Type

export const ImageRemoveResult = Schema.Struct({
  removed: Schema.Array(Schema.String),
  deleted: Schema.Array(Schema.String),
  kept: Schema.Array(Schema.String)
})

export const DoctorCheck = Schema.Struct({
  name: Schema.String,
  ok: Schema.Boolean,
  required: Schema.Boolean,
  detail: Schema.String,
  remediation: Schema.optional(Schema.String)
})

export const DoctorResult = Schema.Struct({ ok: Schema.Boolean, checks: Schema.Array(DoctorCheck) })

export const hostRpcs = [
  /** Warm-start templates in the store, each with whether its image and kernel are still there. */
  Rpc.make("templateList", { success: Schema.Array(TemplateEntry), error: MicroagentError }),
  /** Removes stale templates (image or kernel gone), or all with `all`. */
  Rpc.make("templatePrune", {
    payload: { all: Schema.optional(Schema.Boolean) },
    success: TemplatesPruned,
    error: MicroagentError
  }),
  Rpc.make("imagePull", { payload: ImagePullPayload, success: ImageRecord, error: MicroagentError }),
  Rpc.make("imageList", {
    success: Schema.Struct({ images: Schema.Array(ImageRecord) }),
    error: MicroagentError
  }),
  /** By reference, full digest or a digest prefix of 12+ hex digits. */
  Rpc.make("imageInspect", { payload: { ref: Schema.String }, success: ImageRecord, error: MicroagentError }),
  /** Removes records; with `purge`, their files when no record or workspace uses them. */
  Rpc.make("imageRemove", {
    payload: { refs: Schema.Array(Schema.String), purge: Schema.optional(Schema.Boolean) },
    success: ImageRemoveResult,
    error: MicroagentError
  }),
  /** Records the image `image` names (reference, digest or prefix) under the reference `tag` too. */
  Rpc.make("imageTag", {
    payload: { image: Schema.String, tag: Schema.String },
    success: ImageRecord,
    error: MicroagentError
  }),
  /** Drops records whose baseline is gone and files nothing uses; with `purge`, every record and file. */
  Rpc.make("imagePrune", {
    payload: { purge: Schema.optional(Schema.Boolean) },
    success: ImageRemoveResult,
    error: MicroagentError
  }),
  /**
   * Pushes an image of the store to a registry (its own reference, or `to`): blobs the registry has are
   * not sent, blobs of the image's source repository on the same registry are mounted.
   */
  Rpc.make("imagePush", {
    payload: {
      ref: Schema.String,
      to: Schema.optional(Schema.String),
      insecureRegistry: Schema.optional(Schema.Boolean)
    },
    success: PushResult,
    error: MicroagentError
  }),
  /**
   * Checks a registry credential and saves it in the runtime's auth file ($REGISTRY_AUTH_FILE, else
   * <state>/auth.json). An operator action: the socket is 0600, and MCP does not offer it.
   */
  Rpc.make("registryLogin", {
    payload: {
      registry: Schema.String,
      username: Schema.String,
      password: Schema.Redacted(Schema.String),
      insecureRegistry: Schema.optional(Schema.Boolean)
    },
    success: Schema.Struct({ registry: Schema.String, file: Schema.String }),
    error: MicroagentError
  }),
  Rpc.make("registryLogout", {
    payload: { registry: Schema.String },
    success: Schema.Struct({ registry: Schema.String, file: Schema.String }),
    error: MicroagentError
  }),
  /** Saved registry logins: hosts, usernames and their files, never passwords. */
  Rpc.make("registryList", {
    success: Schema.Struct({ logins: Schema.Array(RegistryLogin) }),
    error: MicroagentError
  }),
  /**
   * Downloads a GGUF model from the hub (`MICROAGENT_HF_ENDPOINT`), verified against its LFS sha256.
   * `token` defaults to the runtime's HF_TOKEN, then HUGGING_FACE_HUB_TOKEN; it is never stored.
   */
  Rpc.make("modelPull", {
    payload: { ref: Schema.String, token: Schema.optional(Schema.Redacted(Schema.String)) },
    success: ModelRecord,
    error: MicroagentError
  }),
  Rpc.make("modelList", {
    success: Schema.Struct({ models: Schema.Array(ModelRecord) }),
    error: MicroagentError
  }),
  /** The record, with its GGUF header read again from the stored file. */
  Rpc.make("modelInspect", { payload: { ref: Schema.String }, success: ModelRecord, error: MicroagentError }),
  /** Drops the record; the file goes too when no other record uses it. */
  Rpc.make("modelRemove", { payload: { ref: Schema.String }, success: ModelRecord, error: MicroagentError }),
  /** Removes partial downloads and model files no record uses. */
  Rpc.make("modelPrune", {
    success: Schema.Struct({ partials: Schema.Array(Schema.String), blobs: Schema.Array(Schema.String) }),
    error: MicroagentError
  }),
  /**
   * Starts (or finds) the runner serving a pulled model on loopback with the OpenAI-compatible API. The
   * socket is 0600, so a custom `runnerCommand` is the operator's; MCP does not offer it.
   */
  Rpc.make("modelServe", {
    payload: {
      ref: Schema.String,
      runner: Schema.optional(Schema.Literal("llamacpp", "custom")),
      runnerCommand: Schema.optional(Schema.String),
      runnerArgs: Schema.optional(Schema.Array(Schema.String)),
      port: Schema.optional(Schema.Int.pipe(Schema.between(1, 65535))),
      contextSize: Schema.optional(Schema.Int.pipe(Schema.between(16, 1048576))),
      dedicated: Schema.optional(Schema.Boolean)
    },
    success: RunnerRecord,
    error: MicroagentError
  }),
  Rpc.make("modelStop", { payload: { ref: Schema.String }, success: RunnerRecord, error: MicroagentError }),
  Rpc.make("modelRunners", {
    success: Schema.Struct({ runners: Schema.Array(RunnerRecord) }),
    error: MicroagentError
  }),
  /** Checks a model policy file (a host path the runtime reads). */
  Rpc.make("modelPolicyValidate", {
    payload: { file: Schema.String },
    success: Schema.Struct({
      file: Schema.String,
      valid: Schema.Literal(true),
      default: Schema.Literal("allow", "deny"),
      rules: Schema.Array(Schema.String)
    }),
    error: MicroagentError
  }),
  /** The decision a model policy makes for a request with these measures; `expect` fails on another. */
  Rpc.make("modelPolicyEvaluate", {
    payload: {
      file: Schema.String,
      method: Schema.optional(Schema.String),
      path: Schema.optional(Schema.String),
      model: Schema.optional(Schema.String),
      workspaceId: Schema.optional(Schema.String),
      capability: Schema.optional(Schema.String),
      workerId: Schema.optional(Schema.String),
      requestBytes: Schema.optional(Schema.NonNegativeInt),
      textBytes: Schema.optional(Schema.NonNegativeInt),
      messages: Schema.optional(Schema.NonNegativeInt),
      maxTokens: Schema.optional(Schema.NonNegativeInt),
      stream: Schema.optional(Schema.Boolean),
      tools: Schema.optional(Schema.Array(Schema.String)),
      expect: Schema.optional(Schema.Literal("allow", "deny"))
    },
    success: Schema.Struct({
      decision: Schema.Literal("allow", "deny"),
      rule: Schema.optional(Schema.String),
      reason: Schema.String,
      expect: Schema.optional(Schema.Literal("allow", "deny"))
    }),
    error: MicroagentError
  }),
  Rpc.make("kernelList", {
    success: Schema.Struct({ kernels: Schema.Array(KernelEntry) }),
    error: MicroagentError
  }),
  /** Recomputes every cached kernel file's sha256. */
  Rpc.make("kernelVerify", {
    success: Schema.Struct({ ok: Schema.Boolean, files: Schema.Array(VerifyResultSchema) }),
    error: MicroagentError
  }),
  Rpc.make("doctor", { success: DoctorResult }),
  /** The full integrity check of the runtime's state.db, and its backups. */
  Rpc.make("stateCheck", { success: StateCheckResult, error: MicroagentError }),
  /**
   * A consistent backup of state.db into `<state>/backups/`, or to `to` (a host path that must not exist).
   * There is no `stateRestore`: a restore replaces the database under the runtime, so it runs without one
   * (`microagent state restore`, or `restoreState` in src/runtime/StateRestore.ts).
   */
  Rpc.make("stateBackup", {
    payload: { to: Schema.optional(Schema.String) },
    success: StateBackup,
    error: MicroagentError
  })
] as const

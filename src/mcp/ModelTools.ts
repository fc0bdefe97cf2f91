/**
 * MCP tools for the local model store: GGUF files pulled from a Hugging Face-compatible hub, verified
 * against the hub's sha256, and the runners serving them. Thin calls into the RPC API. The hub token is
 * the runtime's (HF_TOKEN, HUGGING_FACE_HUB_TOKEN): an agent never handles it; nor does it choose the
 * runner's command line (no custom runners here: that would be a host command of the agent's choosing).
 */
import { Effect, Schema } from "effect"
import type { NotFound } from "../domain/Errors.ts"
import { toErrorBody } from "../domain/Errors.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { RunnerRecord } from "../services/ModelRunners.ts"
import { ModelRecord } from "../services/Models.ts"
import { type AnyTool, defineTool, described, optional, type PreviewResult } from "./Tool.ts"

const modelRef = {
  ref: described(
    Schema.NonEmptyTrimmedString,
    "hf.co/ORG/REPO[@REV]/FILE.gguf or a https://huggingface.co/ORG/REPO/resolve/REV/FILE URL"
  )
}
const PruneResult = Schema.Struct({
  partials: Schema.Array(Schema.String),
  blobs: Schema.Array(Schema.String)
})

const policyFile = {
  policy_file: described(
    Schema.NonEmptyTrimmedString,
    "a model policy (JSON, schema microagent.model_policy.v1): a path on the server's host, inside its host roots"
  )
}
const Decision = Schema.Literal("allow", "deny")

export const modelTools: ReadonlyArray<AnyTool> = [
  defineTool({
    name: "models.policy.validate",
    title: "Validate a model policy",
    description:
      "Check a model mediation policy file; an invalid one fails with what is wrong, field by field.",
    input: policyFile,
    output: Schema.Struct({
      file: Schema.String,
      valid: Schema.Literal(true),
      default: Decision,
      rules: Schema.Array(Schema.String)
    }),
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: (args) =>
      Effect.flatMap(MicroagentClient, (client) => client.modelPolicyValidate({ file: args.policy_file }))
  }),
  defineTool({
    name: "models.policy.evaluate",
    title: "Evaluate a model policy",
    description: "The decision a model policy makes for a request with these measures (the first matching "
      + "rule decides; an allow whose limits are exceeded denies). With expect, another decision fails.",
    input: {
      ...policyFile,
      method: optional(Schema.String, "HTTP method (default POST)"),
      request_path: optional(Schema.String, "request path (default /v1/chat/completions)"),
      model: optional(Schema.String, "the request's model field"),
      workspace_id: optional(Schema.String, "the asking workspace"),
      capability: optional(Schema.String, "the capability asserted"),
      worker_id: optional(Schema.String, "the worker asserted"),
      request_bytes: optional(Schema.NonNegativeInt, "size of the request body"),
      text_bytes: optional(Schema.NonNegativeInt, "bytes of prompt and message text"),
      messages: optional(Schema.NonNegativeInt, "number of messages"),
      max_tokens: optional(Schema.NonNegativeInt, "the request's max_tokens"),
      stream: optional(Schema.Boolean, "a streamed request"),
      tools: optional(Schema.Array(Schema.String), "tool names the request offers"),
      expect: optional(Decision, "fail unless the policy decides this")
    },
    output: Schema.Struct({
      decision: Decision,
      rule: Schema.optional(Schema.String),
      reason: Schema.String,
      expect: Schema.optional(Decision)
    }),
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: (args) =>
      Effect.flatMap(MicroagentClient, (client) =>
        client.modelPolicyEvaluate({
          file: args.policy_file,
          method: args.method,
          path: args.request_path,
          model: args.model,
          workspaceId: args.workspace_id,
          capability: args.capability,
          workerId: args.worker_id,
          requestBytes: args.request_bytes,
          textBytes: args.text_bytes,
          messages: args.messages,
          maxTokens: args.max_tokens,
          stream: args.stream,
          tools: args.tools,
          expect: args.expect
        }))
  }),
  defineTool({
    name: "models.pull",
    title: "Pull a model",
    description: "Download a GGUF model file from the hub, verified against the hub's LFS sha256 while it "
      + "streams and refused (nothing recorded) on a mismatch or a file that is not GGUF. A cut download "
      + "resumes on the next pull.",
    input: modelRef,
    output: ModelRecord,
    kind: "mutate",
    sideEffects: ["downloads the model file", "records the model"],
    cost: "host_compute_and_storage",
    run: (args) => Effect.flatMap(MicroagentClient, (client) => client.modelPull({ ref: args.ref }))
  }),
  defineTool({
    name: "models.list",
    title: "List models",
    description:
      "Every pulled model: reference, digest, size and GGUF header (architecture, context length).",
    input: {},
    output: Schema.Struct({ models: Schema.Array(ModelRecord) }),
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: () => Effect.flatMap(MicroagentClient, (client) => client.modelList())
  }),
  defineTool({
    name: "models.inspect",
    title: "Inspect a model",
    description: "One pulled model, its GGUF header read again from the stored file.",
    input: modelRef,
    output: ModelRecord,
    kind: "read",
    sideEffects: [],
    cost: "host_io",
    run: (args) => Effect.flatMap(MicroagentClient, (client) => client.modelInspect({ ref: args.ref }))
  }),
  defineTool({
    name: "models.remove",
    title: "Remove a model",
    description: "Drop a pulled model's record, and its file when no other reference uses it.",
    input: modelRef,
    output: ModelRecord,
    kind: "destructive",
    sideEffects: ["removes the model record", "deletes its file when no other record uses it"],
    cost: "host_io",
    run: (args) => Effect.flatMap(MicroagentClient, (client) => client.modelRemove({ ref: args.ref })),
    preview: (args) =>
      Effect.flatMap(MicroagentClient, (client) => client.modelInspect({ ref: args.ref })).pipe(
        Effect.map((record): PreviewResult => ({
          preview: true,
          target: record.ref,
          actions: [
            `remove the record of ${record.ref} (${record.digest})`,
            "delete its file unless another record uses it"
          ]
        })),
        Effect.catchTag(
          "NotFound",
          (error: NotFound) =>
            Effect.succeed<PreviewResult>({
              preview: true,
              target: args.ref,
              actions: [],
              wouldFail: toErrorBody(error)
            })
        )
      )
  }),
  defineTool({
    name: "models.serve",
    title: "Serve a model",
    description:
      "Start (or find) the runner serving a pulled model on host loopback with the OpenAI-compatible "
      + "API (/v1/models, /v1/completions, /v1/chat/completions): llama-server when installed, else the "
      + "embedded llama.cpp runner. Answers once the runner does, with its URL.",
    input: {
      ...modelRef,
      context_size: optional(
        Schema.Int.pipe(Schema.between(16, 1048576)),
        "context size in tokens (default 4096, capped at the model's)"
      ),
      dedicated: optional(Schema.Boolean, "a runner of its own, never shared with workspaces")
    },
    output: RunnerRecord,
    kind: "mutate",
    sideEffects: ["starts a model runner process on the host (until models.stop)"],
    cost: "host_compute_and_storage",
    run: (args) =>
      Effect.flatMap(
        MicroagentClient,
        (client) =>
          client.modelServe({
            ref: args.ref,
            ...(args.context_size === undefined ? {} : { contextSize: args.context_size }),
            ...(args.dedicated === undefined ? {} : { dedicated: args.dedicated })
          })
      )
  }),
  defineTool({
    name: "models.stop",
    title: "Stop a model runner",
    description: "Stop the runner serving a model.",
    input: modelRef,
    output: RunnerRecord,
    kind: "mutate",
    sideEffects: ["ends the model runner process"],
    cost: "metadata",
    run: (args) => Effect.flatMap(MicroagentClient, (client) => client.modelStop({ ref: args.ref }))
  }),
  defineTool({
    name: "models.runners",
    title: "List model runners",
    description: "The running model runners: model, URL, runner kind, pid. Dead runners are dropped.",
    input: {},
    output: Schema.Struct({ runners: Schema.Array(RunnerRecord) }),
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: () => Effect.flatMap(MicroagentClient, (client) => client.modelRunners())
  }),
  defineTool({
    name: "models.prune",
    title: "Prune models",
    description: "Remove partial downloads and model files no record uses.",
    input: {},
    output: PruneResult,
    kind: "destructive",
    sideEffects: ["deletes partial downloads", "deletes unused model files"],
    cost: "host_io",
    run: () => Effect.flatMap(MicroagentClient, (client) => client.modelPrune()),
    preview: () =>
      Effect.succeed<PreviewResult>({
        preview: true,
        actions: ["delete every partial download", "delete model files no record uses"]
      })
  })
]

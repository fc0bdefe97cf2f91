/**
 * `microagent model pull|list|inspect|delete|prune` (`ls` for list, `rm` for delete), run in this
 * process against the store. The token is read from `--token`, HF_TOKEN or HUGGING_FACE_HUB_TOKEN
 * and only sent to the hub.
 */
import { Args, Command, Options } from "@effect/cli"
import { Effect, Layer, Option, Schema } from "effect"
import * as ModelRunnersLive from "../layers/model/ModelRunnersLive.ts"
import * as ModelsLive from "../layers/model/ModelsLive.ts"
import {
  modelInspect,
  modelList,
  modelPolicyEvaluate,
  modelPolicyValidate,
  modelPrune,
  modelPull,
  modelRemove,
  modelRunners,
  modelServe,
  modelStop
} from "../programs/Model.ts"
import { RunnerRecord } from "../services/ModelRunners.ts"
import { ModelRecord } from "../services/Models.ts"
import { withStore } from "./Layers.ts"
import { emit, emitList, quietOption } from "./Output.ts"

const withModels = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  withStore(Effect.provide(effect, ModelsLive.layer))

const withRunners = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  withStore(Effect.provide(effect, ModelRunnersLive.layer.pipe(Layer.provideMerge(ModelsLive.layer))))

const encodeRunner = Schema.encodeSync(RunnerRecord)
const runnerLine = (r: RunnerRecord) =>
  `${r.ref}\t${r.url}\t${r.runner}\t${r.pid}\t${r.dedicated ? "dedicated" : r.pinned ? "pinned" : "held"}${
    r.holders.length > 0 ? `\t${r.holders.join(",")}` : ""
  }`

const encodeRecord = Schema.encodeSync(ModelRecord)
const encode = (m: ModelRecord) => encodeRecord(m)

const refArg = Args.text({ name: "ref" }).pipe(
  Args.withDescription(
    "hf.co/ORG/REPO[@REV]/FILE.gguf or a https://huggingface.co/ORG/REPO/resolve/REV/FILE URL"
  )
)

const describe = (m: ModelRecord) =>
  [
    `ref:           ${m.ref}`,
    `digest:        ${m.digest}`,
    `size:          ${m.sizeBytes} bytes`,
    `path:          ${m.path}`,
    `architecture:  ${m.gguf.architecture ?? "-"}`,
    `name:          ${m.gguf.name ?? "-"}`,
    `context:       ${m.gguf.contextLength ?? "-"}`,
    `tensors:       ${m.gguf.tensorCount}`,
    `gguf version:  ${m.gguf.version}`,
    `pulled:        ${m.pulledAt}`
  ].join("\n")

/** Progress on stderr, only when it is a terminal. */
const progress = (done: number, total: number) => {
  if (!process.stderr.isTTY) return
  const pct = total > 0 ? Math.floor((done / total) * 100) : 0
  process.stderr.write(`\r${(done / 1048576).toFixed(1)} MiB / ${(total / 1048576).toFixed(1)} MiB (${pct}%)`)
  if (done >= total) process.stderr.write("\n")
}

const pull = Command.make(
  "pull",
  {
    token: Options.text("token").pipe(
      Options.withDescription("hub bearer token (default: HF_TOKEN, then HUGGING_FACE_HUB_TOKEN)"),
      Options.optional
    ),
    ref: refArg
  },
  ({ ref, token }) =>
    withModels(modelPull(ref, { token: Option.getOrUndefined(token), onProgress: progress })).pipe(
      Effect.flatMap((m) => emit(encode(m), () => `${m.ref}\t${m.sizeBytes}\t${m.digest.slice(7, 19)}`))
    )
).pipe(Command.withDescription("download a GGUF model, verified against the hub's sha256"))

const listHandler = ({ quiet }: { readonly quiet: boolean }) =>
  withModels(modelList()).pipe(
    Effect.flatMap((all) =>
      emitList(
        quiet,
        all.map((m) => m.ref),
        { models: all.map(encode) },
        () => all.map((m) => `${m.ref}\t${m.sizeBytes}\t${m.digest.slice(7, 19)}`).join("\n")
      )
    )
  )
const list = Command.make("list", { quiet: quietOption }, listHandler).pipe(
  Command.withDescription("list the pulled models: ref, size, digest (alias: ls)")
)
const ls = Command.make("ls", { quiet: quietOption }, listHandler).pipe(
  Command.withDescription("list the pulled models")
)

const inspect = Command.make(
  "inspect",
  { ref: refArg },
  ({ ref }) => withModels(modelInspect(ref)).pipe(Effect.flatMap((m) => emit(encode(m), () => describe(m))))
).pipe(
  Command.withDescription("show a pulled model and its GGUF header (architecture, context length)")
)

const deleteHandler = ({ ref }: { readonly ref: string }) =>
  withModels(modelRemove(ref)).pipe(Effect.flatMap((m) => emit({ removed: m.ref }, () => `removed ${m.ref}`)))
const del = Command.make("delete", { ref: refArg }, deleteHandler).pipe(
  Command.withDescription("remove a pulled model (its file too when no other ref uses it; alias: rm)")
)
const rm = Command.make("rm", { ref: refArg }, deleteHandler).pipe(
  Command.withDescription("remove a pulled model")
)

const prune = Command.make("prune", {}, () =>
  withModels(modelPrune()).pipe(
    Effect.flatMap((r) =>
      emit(r, () => `removed ${r.partials.length} partial download(s) and ${r.blobs.length} unused file(s)`)
    )
  )).pipe(Command.withDescription("remove partial downloads and model files no record uses"))

const serve = Command.make(
  "serve",
  {
    runner: Options.choice("runner", ["llamacpp", "custom"]).pipe(
      Options.withDescription(
        "llamacpp: llama-server if installed, else the embedded runner; custom: --runner-command"
      ),
      Options.optional
    ),
    runnerCommand: Options.text("runner-command").pipe(
      Options.withPseudoName("TEMPLATE"),
      Options.withDescription(
        "the custom runner's command line; {model}, {port}, {host} and {ref} are replaced"
      ),
      Options.optional
    ),
    runnerArg: Options.text("runner-arg").pipe(
      Options.withPseudoName("ARG"),
      Options.withDescription(
        "a value appended to the runner's command line (repeatable; flags go in TEMPLATE)"
      ),
      Options.repeated
    ),
    port: Options.integer("port").pipe(
      Options.withDescription("loopback port (default: a free one)"),
      Options.withSchema(Schema.Int.pipe(Schema.between(1, 65535))),
      Options.optional
    ),
    ctx: Options.integer("ctx").pipe(
      Options.withDescription("context size in tokens (default 4096, capped at the model's)"),
      Options.withSchema(Schema.Int.pipe(Schema.between(16, 1048576))),
      Options.optional
    ),
    dedicated: Options.boolean("dedicated").pipe(
      Options.withDescription("a runner of its own, never shared with workspaces")
    ),
    ref: refArg
  },
  ({ ctx, dedicated, port, ref, runner, runnerArg, runnerCommand }) =>
    withRunners(modelServe(ref, {
      dedicated,
      runner: Option.getOrUndefined(runner),
      runnerCommand: Option.getOrUndefined(runnerCommand),
      runnerArgs: runnerArg,
      port: Option.getOrUndefined(port),
      contextSize: Option.getOrUndefined(ctx)
    })).pipe(Effect.flatMap((r) => emit(encodeRunner(r), () => runnerLine(r))))
).pipe(Command.withDescription("serve a pulled model on loopback with the OpenAI-compatible API"))

const stop = Command.make("stop", { ref: refArg }, ({ ref }) =>
  withRunners(modelStop(ref)).pipe(
    Effect.flatMap((r) => emit({ stopped: r.ref, pid: r.pid }, () => `stopped ${r.ref} (pid ${r.pid})`))
  )).pipe(Command.withDescription("stop the runner serving a model"))

const runners = Command.make(
  "runners",
  { quiet: quietOption },
  ({ quiet }) =>
    withRunners(modelRunners()).pipe(
      Effect.flatMap((all) =>
        emitList(
          quiet,
          all.map((r) => r.ref),
          { runners: all.map((r) => encodeRunner(r)) },
          () => all.map(runnerLine).join("\n")
        )
      )
    )
).pipe(Command.withDescription("list the running model runners: ref, URL, runner, pid"))

const policyFileArg = Args.text({ name: "file" }).pipe(
  Args.withDescription("a model policy (JSON, schema microagent.model_policy.v1)")
)

const policyValidate = Command.make(
  "validate",
  { file: policyFileArg },
  ({ file }) =>
    modelPolicyValidate(file).pipe(
      Effect.flatMap((r) =>
        emit(r, () => `${file}: valid (default ${r.default}; rules ${r.rules.join(", ") || "none"})`)
      )
    )
).pipe(Command.withDescription("check a model policy file"))

const count = (name: string, description: string) =>
  Options.integer(name).pipe(
    Options.withDescription(description),
    Options.withSchema(Schema.Int.pipe(Schema.nonNegative())),
    Options.optional
  )

const evaluateOptions = {
  method: Options.text("method").pipe(
    Options.withDescription("HTTP method (default POST)"),
    Options.optional
  ),
  path: Options.text("path").pipe(
    Options.withDescription("request path (default /v1/chat/completions)"),
    Options.optional
  ),
  model: Options.text("model").pipe(Options.withDescription("the request's model field"), Options.optional),
  workspace: Options.text("workspace").pipe(
    Options.withDescription("the asking workspace"),
    Options.optional
  ),
  maxTokens: count("max-tokens", "the request's max_tokens"),
  stream: Options.boolean("stream").pipe(Options.withDescription("a streamed request")),
  tool: Options.text("tool").pipe(
    Options.withDescription("a tool name the request offers (repeatable)"),
    Options.repeated
  ),
  textBytes: count("text-bytes", "bytes of prompt and message text"),
  messages: count("messages", "number of messages"),
  requestBytes: count("request-bytes", "size of the request body"),
  expect: Options.choice("expect", ["allow", "deny"]).pipe(
    Options.withDescription("fail unless the policy decides this"),
    Options.optional
  ),
  file: policyFileArg
}

const evaluateHandler = (o: {
  readonly method: Option.Option<string>
  readonly path: Option.Option<string>
  readonly model: Option.Option<string>
  readonly workspace: Option.Option<string>
  readonly maxTokens: Option.Option<number>
  readonly stream: boolean
  readonly tool: ReadonlyArray<string>
  readonly textBytes: Option.Option<number>
  readonly messages: Option.Option<number>
  readonly requestBytes: Option.Option<number>
  readonly expect: Option.Option<"allow" | "deny">
  readonly file: string
}) =>
  modelPolicyEvaluate(o.file, {
    method: Option.getOrUndefined(o.method),
    path: Option.getOrUndefined(o.path),
    model: Option.getOrUndefined(o.model),
    workspaceId: Option.getOrUndefined(o.workspace),
    maxTokens: Option.getOrUndefined(o.maxTokens),
    stream: o.stream,
    tools: o.tool,
    textBytes: Option.getOrUndefined(o.textBytes),
    messages: Option.getOrUndefined(o.messages),
    requestBytes: Option.getOrUndefined(o.requestBytes)
  }, Option.getOrUndefined(o.expect)).pipe(
    Effect.flatMap((r) => emit(r, () => `${r.decision}\t${r.rule ?? "(default)"}\t${r.reason}`))
  )

const policyEvaluate = Command.make("evaluate", evaluateOptions, evaluateHandler).pipe(
  Command.withDescription("the decision a model policy makes for a request (alias: eval)")
)
const policyEval = Command.make("eval", evaluateOptions, evaluateHandler).pipe(
  Command.withDescription("alias of evaluate")
)

const policy = Command.make("policy").pipe(
  Command.withDescription("check model mediation policies"),
  Command.withSubcommands([policyValidate, policyEvaluate, policyEval])
)

export const modelCommand = Command.make("model").pipe(
  Command.withDescription("pull, inspect, remove and serve local GGUF models (alias: models)"),
  Command.withSubcommands([pull, list, ls, inspect, del, rm, prune, serve, stop, runners, policy])
)

/**
 * `microagent model pull|list|inspect|delete|prune` (`ls` for list, `rm` for delete), run in this
 * process against the store. The token is read from `--token`, HF_TOKEN or HUGGING_FACE_HUB_TOKEN
 * and only sent to the hub.
 */
import { Args, Command, Options } from "@effect/cli"
import { Effect, Layer, Option, Schema } from "effect"
import { ModelRunnersLive } from "../layers/model/ModelRunnersLive.ts"
import { ModelsLive } from "../layers/model/ModelsLive.ts"
import {
  modelInspect,
  modelList,
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

const withModels = <A, E, R>(effect: Effect.Effect<A, E, R>) => withStore(Effect.provide(effect, ModelsLive))

const withRunners = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  withStore(Effect.provide(effect, ModelRunnersLive.pipe(Layer.provideMerge(ModelsLive))))

const encodeRunner = Schema.encodeSync(RunnerRecord)
const runnerLine = (r: RunnerRecord) => `${r.ref}\t${r.url}\t${r.runner}\t${r.pid}`

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
    ref: refArg
  },
  ({ ctx, port, ref, runner, runnerArg, runnerCommand }) =>
    withRunners(modelServe(ref, {
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

export const modelCommand = Command.make("model").pipe(
  Command.withDescription("pull, inspect, remove and serve local GGUF models (alias: models)"),
  Command.withSubcommands([pull, list, ls, inspect, del, rm, prune, serve, stop, runners])
)

/**
 * `microagent model pull|list|inspect|delete|prune` (`ls` for list, `rm` for delete), run in this
 * process against the store. The token is read from `--token`, HF_TOKEN or HUGGING_FACE_HUB_TOKEN
 * and only sent to the hub.
 */
import { Args, Command, Options } from "@effect/cli"
import { Effect, Option, Schema } from "effect"
import { ModelsLive } from "../layers/model/ModelsLive.ts"
import { modelInspect, modelList, modelPrune, modelPull, modelRemove } from "../programs/Model.ts"
import { ModelRecord } from "../services/Models.ts"
import { withNewBackend } from "./Layers.ts"
import { emit, emitList, quietOption } from "./Output.ts"

const withModels = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  withNewBackend(Effect.provide(effect, ModelsLive))

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

export const modelCommand = Command.make("model").pipe(
  Command.withDescription("pull, list, inspect and remove local GGUF models (alias: models)"),
  Command.withSubcommands([pull, list, ls, inspect, del, rm, prune])
)

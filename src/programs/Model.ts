/**
 * `model pull|list|inspect|delete|prune`: the local store of GGUF model files (src/services/Models.ts);
 * `model serve|stop|runners`: host processes serving them (src/services/ModelRunners.ts). Pairing
 * models with workspaces is not built yet.
 */
import { Effect } from "effect"
import { ModelRunners, type ServeOptions } from "../services/ModelRunners.ts"
import { Models, type PullOptions } from "../services/Models.ts"

export const modelPull = Effect.fn("model.pull")(function*(ref: string, options?: PullOptions) {
  const models = yield* Models
  return yield* models.pull(ref, options)
})

export const modelList = Effect.fn("model.list")(function*() {
  const models = yield* Models
  return yield* models.list
})

export const modelInspect = Effect.fn("model.inspect")(function*(ref: string) {
  const models = yield* Models
  return yield* models.inspect(ref)
})

export const modelRemove = Effect.fn("model.remove")(function*(ref: string) {
  const models = yield* Models
  return yield* models.remove(ref)
})

export const modelPrune = Effect.fn("model.prune")(function*() {
  const models = yield* Models
  return yield* models.prune
})

export const modelServe = Effect.fn("model.serve")(function*(ref: string, options?: ServeOptions) {
  const runners = yield* ModelRunners
  return yield* runners.serve(ref, options)
})

export const modelStop = Effect.fn("model.stop")(function*(ref: string) {
  const runners = yield* ModelRunners
  return yield* runners.stop(ref)
})

export const modelRunners = Effect.fn("model.runners")(function*() {
  const runners = yield* ModelRunners
  return yield* runners.list
})

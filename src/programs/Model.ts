/**
 * `model pull|list|inspect|delete|prune`: the local store of GGUF model files (src/services/Models.ts).
 * Serving models and pairing them with workspaces are not built yet.
 */
import { Effect } from "effect"
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

/**
 * `model pull|list|inspect|delete|prune`: the local store of GGUF model files (src/services/Models.ts);
 * `model serve|stop|runners`: host processes serving them (src/services/ModelRunners.ts);
 * `model policy validate|evaluate`: model mediation policies (src/domain/ModelPolicy.ts). Pairing a
 * workspace with a model is `create --model` (programs/internal/ModelPairing.ts).
 */
import { Effect } from "effect"
import { Permanent } from "../domain/Errors.ts"
import { type Decision, evaluateModelPolicy, type RequestFacts } from "../domain/ModelPolicy.ts"
import { ModelRunners, type ServeOptions } from "../services/ModelRunners.ts"
import { Models, type PullOptions } from "../services/Models.ts"
import { readModelPolicy } from "./internal/ModelPairing.ts"

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

/** `model policy validate FILE`: the policy, parsed and checked (an invalid one fails, explained). */
export const modelPolicyValidate = Effect.fn("model.policy.validate")(function*(path: string) {
  const policy = yield* readModelPolicy(path)
  return { file: path, valid: true as const, default: policy.default, rules: policy.rules.map((r) => r.id) }
})

export interface PolicyEvaluation extends Decision {
  readonly expect?: "allow" | "deny" | undefined
}

/**
 * `model policy evaluate FILE`: the decision the policy makes for a request with these measures; with
 * `expect`, a different decision fails (exit 1), for policy tests in CI.
 */
export const modelPolicyEvaluate = Effect.fn("model.policy.evaluate")(
  function*(
    path: string,
    request: { readonly [K in keyof RequestFacts]?: RequestFacts[K] | undefined },
    expect?: "allow" | "deny"
  ) {
    const policy = yield* readModelPolicy(path)
    const decision = evaluateModelPolicy(policy, {
      method: (request.method ?? "POST").toUpperCase(),
      path: request.path ?? "/v1/chat/completions",
      model: request.model,
      workspaceId: request.workspaceId,
      capability: request.capability,
      workerId: request.workerId,
      requestBytes: request.requestBytes ?? 0,
      textBytes: request.textBytes ?? 0,
      messages: request.messages ?? 0,
      maxTokens: request.maxTokens,
      stream: request.stream ?? false,
      tools: request.tools ?? []
    })
    if (expect !== undefined && decision.decision !== expect) {
      return yield* new Permanent({
        message: `the policy ${path} decides ${decision.decision}, not ${expect}: ${decision.reason}`,
        remediation: "change the policy or the expectation"
      })
    }
    return { ...decision, ...(expect === undefined ? {} : { expect }) } satisfies PolicyEvaluation
  }
)

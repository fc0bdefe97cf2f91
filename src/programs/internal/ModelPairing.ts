/**
 * A workspace paired with a model (`create --model`, `run --model`): the guest reaches the model's
 * runner at http://127.0.0.1:11434/v1 over the model channel (no NIC involved). Each start ensures the
 * runner (pulling the model if it is gone from the store), boots the VM with the channel, and starts
 * the workspace's model bridge, which holds the runner while the VM runs. Halt, kill and delete let
 * go; a runner nobody pinned stops with its last holder.
 */
import { Effect, Either, Option } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { InvalidInput, NotFound, Unsupported } from "../../domain/Errors.ts"
import { type ModelMediation, parseModelPolicy } from "../../domain/ModelPolicy.ts"
import type { Workspace } from "../../domain/Workspace.ts"
import { Home } from "../../services/Home.ts"
import type { VmHandle } from "../../services/Hypervisor.ts"
import { ModelRunners } from "../../services/ModelRunners.ts"
import { Models } from "../../services/Models.ts"
import { StateStore } from "../../services/StateStore.ts"

/** The guest's view of its model: what `OPENAI_BASE_URL` and `MICROAGENT_MODEL_URL` say. */
const guestModelUrl = "http://127.0.0.1:11434/v1"

/** The guest environment a paired workspace gets (the user's own values win). */
export const modelEnv = { MICROAGENT_MODEL_URL: guestModelUrl, OPENAI_BASE_URL: guestModelUrl } as const

export interface PairingRequest {
  readonly model: string
  readonly mediation?: ModelMediation | undefined
  readonly policyFile?: string | undefined
}

/** Reads and checks a model policy file; the error names the file. */
export const readModelPolicy = (path: string) =>
  Effect.gen(function*() {
    const text = yield* Effect.try({
      try: () => NodeFs.readFileSync(path, "utf8"),
      catch: (cause) =>
        new InvalidInput({
          message: `cannot read the model policy ${path}: ${
            cause instanceof Error ? cause.message : String(cause)
          }`
        })
    })
    const parsed = parseModelPolicy(text)
    if (Either.isLeft(parsed)) {
      return yield* new InvalidInput({
        message: `the model policy ${path} is not valid:\n${parsed.left}`,
        remediation: "`microagent model policy validate FILE` explains it; see docs/models.md for the schema"
      })
    }
    return parsed.right
  })

const modelServices = Effect.gen(function*() {
  const models = yield* Effect.serviceOption(Models)
  const runners = yield* Effect.serviceOption(ModelRunners)
  if (Option.isNone(models) || Option.isNone(runners)) {
    return yield* new Unsupported({
      message: "this backend cannot pair a workspace with a model",
      remediation: "use the qemu backend",
      feature: "model pairing"
    })
  }
  return { models: models.value, runners: runners.value }
})

/** The model in the store, pulled first if it is not there. */
const storedModel = (ref: string) =>
  Effect.gen(function*() {
    const { models } = yield* modelServices
    return yield* models.inspect(ref).pipe(
      Effect.catchIf((e): e is NotFound => e instanceof NotFound, () => models.pull(ref))
    )
  })

/** What `create` records: the canonical reference, the mediation and the policy file's absolute path. */
export const resolvePairing = (request: PairingRequest) =>
  Effect.gen(function*() {
    const mediation = request.mediation ?? "off"
    if (mediation === "policy" && request.policyFile === undefined) {
      return yield* new InvalidInput({
        message: "--model-mediation policy needs --model-policy-file FILE",
        remediation: "give the policy file, or use --model-mediation local-allow"
      })
    }
    if (mediation !== "policy" && request.policyFile !== undefined) {
      return yield* new InvalidInput({
        message: "--model-policy-file needs --model-mediation policy",
        remediation: "add --model-mediation policy"
      })
    }
    const policyFile = request.policyFile === undefined ? undefined : NodePath.resolve(request.policyFile)
    if (policyFile !== undefined) yield* readModelPolicy(policyFile)
    const model = yield* storedModel(request.model)
    return { ref: model.ref, mediation, ...(policyFile === undefined ? {} : { policyFile }) }
  })

/** Before a paired workspace boots: its runner is up (and its policy still valid). */
export const ensureModelRunner = (workspace: Workspace) =>
  Effect.gen(function*() {
    const pairing = workspace.model
    if (pairing === undefined) return false
    if (pairing.policyFile !== undefined) yield* readModelPolicy(pairing.policyFile)
    const { runners } = yield* modelServices
    yield* storedModel(pairing.ref)
    yield* runners.ensureShared(pairing.ref)
    return true
  })

/** Once the VM runs: its model bridge starts and holds the runner. */
export const attachModel = (workspace: Workspace, handle: VmHandle) =>
  Effect.gen(function*() {
    const pairing = workspace.model
    if (pairing === undefined) return
    const { runners } = yield* modelServices
    const home = yield* Home
    const store = yield* StateStore
    const { bridgePid } = yield* runners.attach({
      workspace: workspace.name,
      ref: pairing.ref,
      socket: NodePath.join(workspace.runtimeDir, "model.sock"),
      vmmPid: handle.pid,
      vmmStartTime: handle.pidStartTime,
      mediation: pairing.mediation,
      policyFile: pairing.policyFile,
      auditLog: NodePath.join(home.workspaceDir(workspace.name), "model-audit.jsonl")
    })
    const runner = (yield* runners.list).find((r) => r.ref === pairing.ref && !r.dedicated)
    yield* store.appendEvent(workspace.name, {
      type: "model",
      detail: `model_worker=attached ${pairing.ref}: runner ${runner?.runner ?? "?"} pid ${
        runner?.pid ?? "?"
      } at ${
        runner?.url ?? "?"
      }, mediation ${pairing.mediation}, bridge pid ${bridgePid}; guest ${guestModelUrl}`
    }).pipe(Effect.ignore)
  })

/** After the VM stopped: the workspace's hold goes (an unpinned runner left unheld stops). */
export const releaseModel = (workspace: Workspace) =>
  Effect.gen(function*() {
    if (workspace.model === undefined) return
    const runners = yield* Effect.serviceOption(ModelRunners)
    if (Option.isNone(runners)) return
    const store = yield* StateStore
    const released = yield* runners.value.release(workspace.name, workspace.model.ref)
    if (released.length === 0) {
      yield* store.appendEvent(workspace.name, {
        type: "model",
        detail:
          `model_worker=released ${workspace.model.ref}: no hold left (the bridge let go when the VM stopped)`
      }).pipe(Effect.ignore)
    }
    for (const r of released) {
      yield* store.appendEvent(workspace.name, {
        type: "model",
        detail: `model_worker=released ${r.ref}: runner pid ${r.pid} ${
          r.stopped ? "stopped (no holder left)" : "kept (pinned or held)"
        }`
      }).pipe(Effect.ignore)
    }
  }).pipe(Effect.ignore)

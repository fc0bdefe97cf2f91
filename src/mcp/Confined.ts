/**
 * The RPC client as MCP tools see it: every procedure that carries a host path (cp's `hostPath`,
 * artifacts.get's target, the bundles and disk images of `mounts`) or secret references has them
 * checked by `HostAccess` and replaced by their `ConfinedHostPath` before the call leaves this process.
 * It is the one door from a tool to the runtime, so a new tool cannot skip the check; a procedure added
 * later with a host path must be added here (test/mcp/HostAccess.test.ts lists them).
 */
import { Effect } from "effect"
import type { PolicyDenied } from "../domain/Errors.ts"
import { FileCopy } from "../domain/FileCopy.ts"
import type { ConfinedHostPath, HostAccessMode } from "../domain/HostAccess.ts"
import { BrokerEndpoint, Mount, type SecretRef } from "../domain/Workspace.ts"
import type { MicroagentClientShape } from "../rpc/Client.ts"
import type { DenialContext, HostAccessShape } from "./HostAccess.ts"

/** The host-access checks with the call's MCP client already provided. */
export interface HostGate {
  readonly check: (
    path: string,
    mode: HostAccessMode,
    context: DenialContext
  ) => Effect.Effect<
    ConfinedHostPath,
    PolicyDenied | Effect.Effect.Error<ReturnType<HostAccessShape["check"]>>
  >
  readonly secretRefs: (
    texts: ReadonlyArray<string>,
    context: DenialContext
  ) => Effect.Effect<ReadonlyArray<SecretRef>, Effect.Effect.Error<ReturnType<HostAccessShape["secretRefs"]>>>
  readonly checkRefs: (
    refs: ReadonlyArray<SecretRef>,
    context: DenialContext
  ) => Effect.Effect<ReadonlyArray<SecretRef>, Effect.Effect.Error<ReturnType<HostAccessShape["checkRefs"]>>>
}

type Payload<K extends keyof MicroagentClientShape> = Parameters<MicroagentClientShape[K]>[0]
type Options<K extends keyof MicroagentClientShape> = Parameters<MicroagentClientShape[K]>[1]

/** The procedures that take host paths or secret references; every other one passes through. */
export const confinedProcedures = [
  "cp",
  "artifactsGet",
  "apply",
  "create",
  "plan",
  "run",
  "start",
  "modelPolicyValidate",
  "modelPolicyEvaluate"
] as const

const confineMounts = (
  gate: HostGate,
  mounts: ReadonlyArray<Mount> | undefined,
  context: DenialContext
) =>
  mounts === undefined ? Effect.succeed(undefined) : Effect.forEach(mounts, (mount) =>
    mount.kind === "volume"
      ? Effect.succeed(mount)
      : Effect.map(
        // A bundle is read; a disk image attached read-write is written by the guest.
        gate.check(mount.source, mount.kind === "image" && !mount.readOnly ? "write" : "read", context),
        (source) => new Mount({ ...mount, source })
      ))

/** The runtime reads each file's source at every start. */
const confineFiles = (gate: HostGate, files: ReadonlyArray<FileCopy> | undefined, context: DenialContext) =>
  files === undefined
    ? Effect.succeed(undefined)
    : Effect.forEach(
      files,
      (file) =>
        Effect.map(gate.check(file.source, "read", context), (source) => new FileCopy({ ...file, source }))
    )

const confineRefs = (gate: HostGate, refs: ReadonlyArray<SecretRef> | undefined, context: DenialContext) =>
  refs === undefined ? Effect.succeed(undefined) : gate.checkRefs(refs, context)

/** The runtime reads a paired model's policy file at every start. */
const confineModel = <M extends { readonly policyFile?: string | undefined }>(
  gate: HostGate,
  model: M | undefined,
  context: DenialContext
) =>
  model?.policyFile === undefined
    ? Effect.succeed(model)
    : Effect.map(gate.check(model.policyFile, "read", context), (policyFile) => ({ ...model, policyFile }))

/** The runtime reads each broker endpoint's ca= bundle at every start. */
const confineBrokers = (
  gate: HostGate,
  brokers: ReadonlyArray<BrokerEndpoint> | undefined,
  context: DenialContext
) =>
  brokers === undefined
    ? Effect.succeed(undefined)
    : Effect.forEach(brokers, (endpoint) =>
      endpoint.ca === undefined
        ? Effect.succeed(endpoint)
        : Effect.map(
          gate.check(endpoint.ca, "read", context),
          (ca) => new BrokerEndpoint({ ...endpoint, ca })
        ))

export const confineClient = (
  client: MicroagentClientShape,
  gate: HostGate,
  tool: string
): MicroagentClientShape => {
  const context = (workspace?: string): DenialContext => ({ tool, workspace })
  const withoutUndefined = <A extends object>(value: A) =>
    Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as A
  const confined: Partial<Record<typeof confinedProcedures[number], unknown>> = {
    cp: ((payload: Payload<"cp">, options?: Options<"cp">) =>
      Effect.flatMap(
        gate.check(payload.hostPath, payload.direction === "in" ? "read" : "write", context(payload.name)),
        (hostPath) => client.cp({ ...payload, hostPath }, options)
      )) as unknown as MicroagentClientShape["cp"],
    artifactsGet: ((payload: Payload<"artifactsGet">, options?: Options<"artifactsGet">) =>
      Effect.flatMap(
        gate.check(payload.hostPath, "write", context(payload.name)),
        (hostPath) => client.artifactsGet({ ...payload, hostPath }, options)
      )) as unknown as MicroagentClientShape["artifactsGet"],
    create: ((payload: Payload<"create">, options?: Options<"create">) =>
      Effect.gen(function*() {
        const mounts = yield* confineMounts(gate, payload.mounts, context(payload.name))
        const secrets = yield* confineRefs(gate, payload.secrets, context(payload.name))
        const files = yield* confineFiles(gate, payload.files, context(payload.name))
        const model = yield* confineModel(gate, payload.model, context(payload.name))
        const brokers = yield* confineBrokers(gate, payload.brokers, context(payload.name))
        return yield* client.create(
          withoutUndefined({ ...payload, mounts, secrets, files, model, brokers }),
          options
        )
      })) as unknown as MicroagentClientShape["create"],
    run: ((payload: Payload<"run">, options?: Options<"run">) =>
      Effect.gen(function*() {
        const mounts = yield* confineMounts(gate, payload.mounts, context(payload.name))
        const secrets = yield* confineRefs(gate, payload.secrets, context(payload.name))
        const files = yield* confineFiles(gate, payload.files, context(payload.name))
        const model = yield* confineModel(gate, payload.model, context(payload.name))
        const brokers = yield* confineBrokers(gate, payload.brokers, context(payload.name))
        return yield* client.run(
          withoutUndefined({ ...payload, mounts, secrets, files, model, brokers }),
          options
        )
      })) as unknown as MicroagentClientShape["run"],
    apply: ((payload: Payload<"apply">, options?: Options<"apply">) =>
      Effect.gen(function*() {
        const mounts = yield* confineMounts(gate, payload.mounts, context(payload.name))
        const files = yield* confineFiles(gate, payload.files, context(payload.name))
        return yield* client.apply(withoutUndefined({ ...payload, mounts, files }), options)
      })) as unknown as MicroagentClientShape["apply"],
    // A plan looks at the same host paths as the call it plans.
    plan: ((payload: Payload<"plan">, options?: Options<"plan">) =>
      Effect.gen(function*() {
        const mounts = yield* confineMounts(gate, payload.mounts, context(payload.name))
        const secrets = yield* confineRefs(gate, payload.secrets, context(payload.name))
        const files = yield* confineFiles(gate, payload.files, context(payload.name))
        const model = yield* confineModel(gate, payload.model, context(payload.name))
        const brokers = yield* confineBrokers(gate, payload.brokers, context(payload.name))
        return yield* client.plan(
          withoutUndefined({ ...payload, mounts, secrets, files, model, brokers }),
          options
        )
      })) as unknown as MicroagentClientShape["plan"],
    modelPolicyValidate:
      ((payload: Payload<"modelPolicyValidate">, options?: Options<"modelPolicyValidate">) =>
        Effect.flatMap(
          gate.check(payload.file, "read", context()),
          (file) => client.modelPolicyValidate({ ...payload, file }, options)
        )) as unknown as MicroagentClientShape["modelPolicyValidate"],
    modelPolicyEvaluate:
      ((payload: Payload<"modelPolicyEvaluate">, options?: Options<"modelPolicyEvaluate">) =>
        Effect.flatMap(
          gate.check(payload.file, "read", context()),
          (file) => client.modelPolicyEvaluate({ ...payload, file }, options)
        )) as unknown as MicroagentClientShape["modelPolicyEvaluate"],
    start: ((payload: Payload<"start">, options?: Options<"start">) =>
      Effect.gen(function*() {
        const secrets = yield* confineRefs(gate, payload.secrets, context(payload.name))
        return yield* client.start(withoutUndefined({ ...payload, secrets }), options)
      })) as unknown as MicroagentClientShape["start"]
  }
  return { ...client, ...confined } as MicroagentClientShape
}

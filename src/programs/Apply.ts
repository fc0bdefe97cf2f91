/**
 * `apply`: brings a workspace's record in line with a spec, without a rebuild. Only the fields the
 * spec names are compared. What the guest reads at a start (entrypoint, env, files, setup, outputs,
 * restart, egress, hostname, memory, vCPUs) is written to the record at once and takes effect at the
 * next start; what shapes the VM's devices (network, published ports, disks) is changed only while
 * the workspace is not running; what would need a new disk or VM (image, disk size, name) is refused.
 * Any refusal refuses the whole spec: the conflict names each field and nothing is written.
 */
import { Effect, Either, Schema } from "effect"
import { allowProblem, EgressPolicy } from "../domain/Egress.ts"
import { Conflict, InvalidInput } from "../domain/Errors.ts"
import { normalizeImageRef } from "../domain/ImageRef.ts"
import { validateMounts } from "../domain/MountFlag.ts"
import type { ApplyRequest } from "../domain/Requests.ts"
import { profiles, Resources, type Workspace } from "../domain/Workspace.ts"
import { StateStore } from "../services/StateStore.ts"
import { resolveFileCopies } from "./internal/FileDelivery.ts"
import { checkOutputs } from "./internal/Outputs.ts"

/** The desired values of the fields a spec names; an absent field is left as it is. */
export interface ApplyFields extends Omit<ApplyRequest, "name" | "dryRun"> {
  /** The spec's name: a workspace is never renamed, so a different one is refused. */
  readonly name?: string | undefined
}

export const ApplyChange = Schema.Struct({
  field: Schema.String,
  from: Schema.Unknown,
  to: Schema.Unknown,
  /** `next start` (the record is changed now, the guest sees it when it next boots), or why it is refused. */
  effect: Schema.String
})
export type ApplyChange = typeof ApplyChange.Type

export const ApplyResult = Schema.Struct({
  workspace: Schema.String,
  state: Schema.String,
  /** Whether the record was (or, with `dryRun`, would be) changed. */
  changed: Schema.Boolean,
  dryRun: Schema.Boolean,
  changes: Schema.Array(ApplyChange)
})
export type ApplyResult = typeof ApplyResult.Type

/** Plain JSON, object keys sorted, so that equal values compare equal whatever their order or class. */
const canonical = (value: unknown): unknown => {
  if (Array.isArray(value)) return value.map(canonical)
  if (value !== null && typeof value === "object") {
    const plain = JSON.parse(JSON.stringify(value)) as Record<string, unknown>
    return Object.fromEntries(
      Object.keys(plain).sort().map((key) => [key, canonical(plain[key])])
    )
  }
  return value
}

const same = (a: unknown, b: unknown) => JSON.stringify(canonical(a)) === JSON.stringify(canonical(b))

type Kind = "start" | "stopped" | "never"

interface FieldRule {
  readonly field: string
  readonly from: unknown
  readonly to: unknown
  /** `start`: any state, seen at the next start; `stopped`: only while not running; `never`: refused. */
  readonly kind: Kind
  readonly refusal?: string
  readonly patch: (ws: Workspace) => Workspace
}

const live = new Set(["running", "paused", "starting", "stopping"])

export const apply = Effect.fn("apply")(function*(
  name: string,
  desired: ApplyFields,
  options: { readonly dryRun?: boolean | undefined } = {}
) {
  const store = yield* StateStore
  const ws = yield* store.get(name)
  // The same checks `create` makes on these fields.
  if (desired.mounts !== undefined) yield* validateMounts(desired.mounts)
  if (desired.outputs !== undefined) yield* checkOutputs(desired.outputs)
  const badAllow = (desired.egress?.allow ?? []).map(allowProblem).filter((p) => p !== undefined)
  if (badAllow.length > 0) {
    return yield* new InvalidInput({
      message: `invalid egress allow: ${badAllow.join("; ")}`,
      remediation: "use host, .suffix (apex and subdomains) or A.B.C.D[/N], each with an optional :port"
    })
  }
  const files = desired.files === undefined ? undefined : yield* resolveFileCopies(desired.files)

  const rules: Array<FieldRule> = []
  const consider = (rule: FieldRule) => {
    if (!same(rule.from, rule.to)) rules.push(rule)
  }
  if (desired.name !== undefined) {
    consider({
      field: "name",
      from: ws.name,
      to: desired.name,
      kind: "never",
      refusal: "a workspace cannot be renamed",
      patch: (w) => w
    })
  }
  if (desired.image !== undefined) {
    const wanted = Either.getOrElse(normalizeImageRef(desired.image), () => desired.image!)
    const current = Either.getOrElse(normalizeImageRef(ws.image.ref), () => ws.image.ref)
    consider({
      field: "image",
      from: current,
      to: wanted,
      kind: "never",
      refusal: "a new image needs a new root disk: create another workspace",
      patch: (w) => w
    })
  }
  if (desired.sizeMiB !== undefined) {
    consider({
      field: "resources.sizeMiB",
      from: ws.resources.sizeMiB,
      to: desired.sizeMiB,
      kind: "never",
      refusal: `the disk is resized with \`microagent resize ${name} --size-mib ${desired.sizeMiB}\``,
      patch: (w) => w
    })
  }
  const profile = desired.profile === undefined ? undefined : profiles[desired.profile]
  const memoryMiB = desired.memoryMiB ?? profile?.memoryMiB
  const cpus = desired.cpus ?? profile?.cpus
  if (desired.profile !== undefined) {
    consider({
      field: "profile",
      from: ws.profile,
      to: desired.profile,
      kind: "start",
      patch: (w) => ({ ...w, profile: desired.profile }) as Workspace
    })
  }
  if (memoryMiB !== undefined) {
    consider({
      field: "resources.memoryMiB",
      from: ws.resources.memoryMiB,
      to: memoryMiB,
      kind: "start",
      patch: (w) => ({ ...w, resources: new Resources({ ...w.resources, memoryMiB }) }) as Workspace
    })
  }
  if (cpus !== undefined) {
    consider({
      field: "resources.cpuCount",
      from: ws.resources.cpus,
      to: cpus,
      kind: "start",
      patch: (w) => ({ ...w, resources: new Resources({ ...w.resources, cpus }) }) as Workspace
    })
  }
  const simple = <K extends keyof Workspace & keyof ApplyFields>(
    key: K,
    field: string,
    kind: Kind,
    value: Workspace[K] | undefined
  ) => {
    if (value === undefined) return
    consider({ field, from: ws[key], to: value, kind, patch: (w) => ({ ...w, [key]: value }) as Workspace })
  }
  simple("hostname", "hostname", "start", desired.hostname)
  simple("restart", "restart", "start", desired.restart)
  if (desired.entrypoint !== undefined) {
    const entrypoint = desired.entrypoint.trim() === "" ? undefined : desired.entrypoint
    consider({
      field: "entrypoint",
      from: ws.entrypoint,
      to: entrypoint,
      kind: "start",
      patch: (w) => ({ ...w, entrypoint }) as Workspace
    })
  }
  simple("env", "env", "start", desired.env === undefined ? undefined : { ...desired.env })
  simple("files", "files", "start", files)
  simple("outputs", "outputs", "start", desired.outputs)
  if (desired.setup !== undefined) {
    const setup = desired.setup
    consider({
      field: "setup",
      from: ws.setup,
      to: setup,
      kind: "start",
      // New steps run at the next start, all of them, as at a first start.
      patch: (w) => ({ ...w, setup, setupDone: undefined }) as Workspace
    })
  }
  if (desired.egress !== undefined) {
    // Credential swaps come with their host-held secrets at create: a spec without any keeps them.
    const egress = new EgressPolicy({
      ...desired.egress,
      swaps: desired.egress.swaps.length > 0 ? desired.egress.swaps : ws.egress?.swaps ?? []
    })
    consider({
      field: "egress",
      from: ws.egress,
      to: egress,
      kind: "start",
      patch: (w) => ({ ...w, egress }) as Workspace
    })
  }
  simple("network", "network.mode", "stopped", desired.network)
  simple("ports", "network.forwards", "stopped", desired.ports)
  simple("mounts", "disks and bundles", "stopped", desired.mounts)

  const running = live.has(ws.state)
  const refusalOf = (rule: FieldRule) =>
    rule.kind === "never"
      ? rule.refusal
      : rule.kind === "stopped" && running
      ? `${ws.name} is ${ws.state}: halt it first (the VM's devices are fixed while it runs)`
      : undefined
  const refused = rules.filter((rule) => refusalOf(rule) !== undefined)
  if (refused.length > 0) {
    return yield* new Conflict({
      message: `apply to ${name} refused, nothing written: ${
        refused.map((rule) => `${rule.field} (${refusalOf(rule)})`).join("; ")
      }`,
      remediation: "change only what can change in place, or create a new workspace from the spec"
    })
  }
  const changes = rules.map((rule): ApplyChange => ({
    field: rule.field,
    from: canonical(rule.from),
    to: canonical(rule.to),
    effect: "next start"
  }))
  if (rules.length > 0 && options.dryRun !== true) {
    yield* store.update(name, (w) => rules.reduce((acc, rule) => rule.patch(acc), w))
    yield* store.appendEvent(name, {
      type: "apply",
      detail: `changed ${rules.map((r) => r.field).join(", ")}`
    })
  }
  return {
    workspace: name,
    state: ws.state,
    changed: rules.length > 0,
    dryRun: options.dryRun === true,
    changes
  } satisfies ApplyResult
})

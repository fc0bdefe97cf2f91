/**
 * What a `run` or `create` would do, found out without booting, pulling or writing anything
 * (`--dry-run`): the image as the local store knows it, the kernel the backend would boot, the
 * resources, disks, network and what runs in the guest.
 */
import { Schema } from "effect"
import { Addressing } from "./Addressing.ts"
import { EgressPolicy } from "./Egress.ts"
import { FileCopy } from "./FileCopy.ts"
import { Backend, Mount, NetworkMode, OutputDecl, PublishedPort, RestartPolicy } from "./Workspace.ts"

export class PlanImage extends Schema.Class<PlanImage>("PlanImage")({
  /** The reference as given. */
  ref: Schema.String,
  /** Whether the local store holds it; a dry run never pulls. */
  pulled: Schema.Boolean,
  /** The manifest digest the store resolved it to, when it holds it. */
  digest: Schema.optional(Schema.String),
  /** The image's own Entrypoint and Cmd, when it is pulled (what runs when no command is given). */
  command: Schema.optional(Schema.Array(Schema.String))
}) {}

export class PlanKernel extends Schema.Class<PlanKernel>("PlanKernel")({
  /** The kernel's version, e.g. `6.1.0-28-cloud-amd64`. */
  name: Schema.String,
  sha256: Schema.String,
  path: Schema.String,
  /** Where it came from: `path:/…`, `url:…`, `debian:…`. */
  source: Schema.String
}) {}

export class RunPlan extends Schema.Class<RunPlan>("RunPlan")({
  /** `run` (one-shot) or `create` (persistent). */
  kind: Schema.Literal("run", "create"),
  /** The workspace's name; absent when one would be generated. */
  name: Schema.optional(Schema.String),
  backend: Backend,
  image: PlanImage,
  /** Absent when the backend boots no kernel of ours, or none is installed yet (`kernelNote` says which). */
  kernel: Schema.optional(PlanKernel),
  kernelNote: Schema.optional(Schema.String),
  resources: Schema.Struct({
    memoryMiB: Schema.Int,
    cpus: Schema.Int,
    /** The root disk; absent when it would be the image's content plus headroom and the image is not pulled. */
    diskMiB: Schema.optional(Schema.Int),
    /** `given` (a flag, the spec or a profile), `image` (the pulled baseline's size), `unknown`. */
    diskFrom: Schema.Literal("given", "image", "unknown")
  }),
  mounts: Schema.Array(Mount),
  network: Schema.Struct({
    mode: NetworkMode,
    networks: Schema.Array(Schema.String),
    egress: EgressPolicy,
    ports: Schema.Array(PublishedPort),
    /** The guest's own addressing, when it has one. */
    addressing: Schema.optional(Addressing)
  }),
  setup: Schema.Array(Schema.String),
  files: Schema.Array(FileCopy),
  /** `create`: what each start runs in the background. */
  entrypoint: Schema.optional(Schema.String),
  /** `run`: the command; the image's Entrypoint and Cmd when none was given (empty if not pulled). */
  command: Schema.optional(Schema.Array(Schema.String)),
  env: Schema.Array(Schema.String),
  secrets: Schema.Array(Schema.String),
  /** Credential broker endpoints, as `--broker` texts (their secrets by name). */
  brokers: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  outputs: Schema.Array(OutputDecl),
  restart: Schema.optional(RestartPolicy),
  ttlSeconds: Schema.optional(Schema.Number),
  /** The paired model (as given; a real create pulls it if the store lacks it) and its mediation. */
  model: Schema.optional(Schema.Struct({
    ref: Schema.String,
    mediation: Schema.String,
    policyFile: Schema.optional(Schema.String)
  }))
}) {}

const modeText = (mode: number | undefined) =>
  mode === undefined ? "" : ` (${mode.toString(8).padStart(4, "0")})`

const list = (items: ReadonlyArray<string>, none = "none") => items.length === 0 ? none : items.join(", ")

/** The plan as text, one field a line, for people. */
export const planText = (plan: RunPlan): string => {
  const lines: Array<string> = []
  const row = (label: string, value: string) =>
    lines.push(value === "" ? `${label}:` : `${`${label}:`.padEnd(12)}${value}`)
  row("plan", `${plan.kind} ${plan.name ?? "(generated name)"}: nothing booted, pulled or written`)
  row("backend", plan.backend)
  row(
    "image",
    plan.image.pulled
      ? `${plan.image.ref} ${plan.image.digest ?? ""} (in the local store)`.replace("  ", " ")
      : `${plan.image.ref} (not pulled: pulled at ${plan.kind})`
  )
  row(
    "kernel",
    plan.kernel === undefined
      ? plan.kernelNote ?? "none"
      : `${plan.kernel.name} sha256:${plan.kernel.sha256}`
  )
  const disk = plan.resources.diskMiB === undefined
    ? "disk: the image's content plus headroom"
    : `disk ${plan.resources.diskMiB} MiB${plan.resources.diskFrom === "image" ? " (the image's)" : ""}`
  row("resources", `${plan.resources.cpus} vCPUs, ${plan.resources.memoryMiB} MiB memory, ${disk}`)
  row(
    "mounts",
    list(plan.mounts.map((m) => `${m.source}:${m.target}${m.readOnly ? ":ro" : ""} (${m.kind})`))
  )
  const egress = plan.network.mode === "isolated"
    ? ""
    : `; egress ${plan.network.egress.mode}${
      plan.network.egress.allow.length > 0 ? ` allow ${plan.network.egress.allow.join(",")}` : ""
    }${plan.network.egress.lockAllowlist ? " (allowlist locked)" : ""}`
  row(
    "network",
    `${plan.network.mode}${
      plan.network.networks.length > 0 ? ` + ${plan.network.networks.join(", ")}` : ""
    }${egress}; ports ${
      list(plan.network.ports.map((p) => `${p.hostIp}:${p.hostPort}->${p.guestPort}/tcp`))
    }${
      plan.network.addressing === undefined
        ? ""
        : `; address ${plan.network.addressing.ip} via ${plan.network.addressing.gateway}${
          plan.network.addressing.routes.map((r) => `, ${r.destination} via ${r.via}`).join("")
        }`
    }`
  )
  row("setup", plan.setup.length === 0 ? "none" : "")
  plan.setup.forEach((step, i) =>
    lines.push(`  ${i + 1}. ${step.split("\n")[0]}${step.includes("\n") ? " …" : ""}`)
  )
  row("files", plan.files.length === 0 ? "none" : "")
  for (const f of plan.files) lines.push(`  ${f.source} -> ${f.target}${modeText(f.mode)}`)
  if (plan.kind === "create") row("entrypoint", plan.entrypoint ?? "none")
  else {
    row(
      "command",
      plan.command !== undefined && plan.command.length > 0
        ? JSON.stringify(plan.command)
        : "the image's Entrypoint and Cmd"
    )
  }
  if (plan.env.length > 0) row("env", plan.env.join(", "))
  if (plan.secrets.length > 0) row("secrets", plan.secrets.join(", "))
  for (const broker of plan.brokers) row("broker", broker)
  if (plan.outputs.length > 0) row("outputs", plan.outputs.map((o) => `${o.name}=${o.path}`).join(", "))
  if (plan.restart !== undefined) row("restart", plan.restart)
  if (plan.ttlSeconds !== undefined && plan.ttlSeconds > 0) row("ttl", `${plan.ttlSeconds} s`)
  if (plan.model !== undefined) {
    row(
      "model",
      `${plan.model.ref} at http://127.0.0.1:11434/v1 (mediation ${plan.model.mediation}${
        plan.model.policyFile === undefined ? "" : `, policy ${plan.model.policyFile}`
      })`
    )
  }
  return lines.join("\n")
}

/**
 * `run --dry-run` / `create --dry-run`: what the call would do, checked as `create` checks it, with
 * the image and kernel looked up in the local stores only. Nothing is pulled, installed, booted or
 * written.
 */
import { Effect, Option } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { describeBroker } from "../domain/Broker.ts"
import { defaultEgress, EgressPolicy } from "../domain/Egress.ts"
import { Conflict } from "../domain/Errors.ts"
import { PlanImage, PlanKernel, RunPlan } from "../domain/Plan.ts"
import type { PlanRequest } from "../domain/Requests.ts"
import { Hypervisor } from "../services/Hypervisor.ts"
import { ImageStore } from "../services/ImageStore.ts"
import { KernelCache } from "../services/KernelCache.ts"
import { StateStore } from "../services/StateStore.ts"
import { checkCreate } from "./Create.ts"

/** A plan's request (domain/Requests.ts): a create's, with the kind of call and a run's command. */
export type PlanOptions = PlanRequest

const mib = 1024 * 1024

/** The kernel `KernelCache.ensure` would pick: the newest install of the host's architecture. */
const plannedKernel = Effect.gen(function*() {
  const kernels = yield* Effect.serviceOption(KernelCache)
  if (Option.isNone(kernels)) return { note: "none: this backend boots no kernel of microagent's" }
  const arch = process.arch === "arm64" ? "aarch64" : "x86_64"
  const entry = (yield* kernels.value.list).filter((k) => k.arch === arch).at(-1)
  if (entry === undefined || !NodeFs.existsSync(entry.path)) {
    return { note: `none installed for ${arch}: the default kernel is installed at the first boot` }
  }
  return {
    kernel: new PlanKernel({
      name: entry.version,
      sha256: entry.sha256,
      path: entry.path,
      source: entry.source
    })
  }
})

export const plan = Effect.fn("plan")(function*(options: PlanOptions) {
  const { addressing, files, resources } = yield* checkCreate(options)
  const store = yield* StateStore
  const images = yield* ImageStore
  const hypervisor = yield* Hypervisor
  if (options.name !== undefined && Option.isSome(yield* store.find(options.name))) {
    return yield* new Conflict({
      message: `workspace ${options.name} already exists`,
      remediation: "choose another name, or delete it first"
    })
  }
  // The local store only: a dry run never pulls.
  const record = yield* images.inspect(options.image).pipe(
    Effect.map(Option.some),
    Effect.catchTag("NotFound", () => Effect.succeed(Option.none()))
  )
  const image = Option.match(record, {
    onNone: () => new PlanImage({ ref: options.image, pulled: false }),
    onSome: (r) =>
      new PlanImage({
        ref: options.image,
        pulled: true,
        digest: r.digest,
        command: [...r.config.entrypoint, ...r.config.cmd]
      })
  })
  const baselineMiB = Option.flatMap(
    record,
    (r) =>
      r.baselinePath !== undefined && NodeFs.existsSync(r.baselinePath)
        ? Option.some(Math.ceil(NodeFs.statSync(r.baselinePath).size / mib))
        : Option.none()
  )
  const disk = resources.sizeMiB !== undefined
    ? { diskMiB: resources.sizeMiB, diskFrom: "given" as const }
    : Option.match(baselineMiB, {
      onNone: () => ({ diskFrom: "unknown" as const }),
      onSome: (diskMiB) => ({ diskMiB, diskFrom: "image" as const })
    })
  const kernel = yield* plannedKernel
  const command = options.command ?? []
  return new RunPlan({
    kind: options.kind,
    ...(options.name === undefined ? {} : { name: options.name }),
    backend: hypervisor.backend,
    image,
    ...("kernel" in kernel ? { kernel: kernel.kernel } : { kernelNote: kernel.note }),
    resources: { memoryMiB: resources.memoryMiB, cpus: resources.cpus, ...disk },
    mounts: options.mounts ?? [],
    network: {
      mode: options.network ?? "user",
      networks: options.networks ?? [],
      egress: options.egress === undefined ? defaultEgress : new EgressPolicy(options.egress),
      ports: options.ports ?? [],
      ...(addressing === undefined ? {} : { addressing })
    },
    setup: options.setup ?? [],
    files,
    ...(options.kind === "create" && options.entrypoint !== undefined
      ? { entrypoint: options.entrypoint }
      : {}),
    ...(options.kind === "run" ? { command: command.length > 0 ? command : image.command ?? [] } : {}),
    env: Object.keys(options.env ?? {}),
    secrets: (options.secrets ?? []).map((s) =>
      `${s.name}=${s.source}${s.use === "broker" ? " (broker)" : ""}`
    ),
    brokers: (options.brokers ?? []).map(describeBroker),
    outputs: options.outputs ?? [],
    ...(options.kind === "create" ? { restart: options.restart ?? "never" } : {}),
    ...(options.ttlSeconds === undefined ? {} : { ttlSeconds: options.ttlSeconds }),
    ...(options.model === undefined ? {} : {
      model: {
        ref: options.model.model,
        mediation: options.model.mediation ?? "off",
        ...(options.model.policyFile === undefined
          ? {}
          : { policyFile: NodePath.resolve(options.model.policyFile) })
      }
    })
  })
})

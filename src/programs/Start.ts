/**
 * `start`: boot a workspace's VM from its disk. The `start` transition is the admission check: of two
 * concurrent starts, one wins and the other gets `Conflict`. Failure or interruption at any point
 * kills whatever was launched and records `failed`; the store never says `running` for a VM that is not.
 */
import { DateTime, Duration, Effect, Exit, Option } from "effect"
import { randomUUID } from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { defaultEgress } from "../domain/Egress.ts"
import { Conflict, InvalidInput, Unsupported } from "../domain/Errors.ts"
import { mergeRefs } from "../domain/SecretRefs.ts"
import { type ProfileName, profiles, Resources, type SecretRef, type Workspace } from "../domain/Workspace.ts"
import { Egress } from "../services/Egress.ts"
import { Home } from "../services/Home.ts"
import { Hypervisor, LaunchConfig, PortForward, type VmHandle } from "../services/Hypervisor.ts"
import { KernelCache } from "../services/KernelCache.ts"
import { StateStore } from "../services/StateStore.ts"
import { launchEntrypoint } from "./Entrypoint.ts"
import { kill } from "./Halt.ts"
import { claimDisk } from "./internal/DiskClaim.ts"
import { checkFileSources, deliverFiles } from "./internal/FileDelivery.ts"
import { attachMounts, checkMounts, releaseMounts } from "./internal/Mounts.ts"
import { reapOrphanVmms } from "./internal/Orphans.ts"
import { ownedByMe, reconcile, requireBackend, withoutOwner } from "./internal/Reconcile.ts"
import { checkSecretValues, deliverSecrets, type SecretValues } from "./internal/SecretDelivery.ts"
import { launchWithNetworks, preflightNetworking } from "./Network.ts"
import { launchService } from "./Service.ts"
import { runSetup } from "./Setup.ts"

export interface StartOptions {
  readonly bootTimeoutSeconds?: number | undefined
  /** References to record before this start (replacing those of the same name). */
  readonly secrets?: ReadonlyArray<SecretRef> | undefined
  /** The values of every secret the workspace references, resolved by the caller; in memory only. */
  readonly secretValues?: SecretValues | undefined
  /** For this start only: a profile's memory and vCPUs, or these (the record keeps its own). */
  readonly profile?: ProfileName | undefined
  readonly memoryMiB?: number | undefined
  readonly cpus?: number | undefined
  /** A new lease, counted from now (0: none); without it an expired lease refuses the start. */
  readonly ttlSeconds?: number | undefined
}

/** An expired lease stops a start, unless the start brings a new one. */
const checkLease = (workspace: Workspace, ttlSeconds: number | undefined) =>
  Effect.gen(function*() {
    if (ttlSeconds !== undefined && !(Number.isFinite(ttlSeconds) && ttlSeconds >= 0)) {
      return yield* new InvalidInput({
        message: `invalid --ttl ${ttlSeconds}`,
        remediation: "give a duration such as 30m or 7d, or 0 for no lease"
      })
    }
    const now = yield* DateTime.now
    if (
      ttlSeconds === undefined && workspace.expiresAt !== undefined
      && DateTime.lessThan(workspace.expiresAt, now)
    ) {
      return yield* new Conflict({
        message: `workspace ${workspace.name}'s lease expired at ${DateTime.formatIso(workspace.expiresAt)}`,
        remediation: `give it a new lease: microagent start --ttl 1h ${workspace.name} (or --ttl 0 for none)`
      })
    }
    if (ttlSeconds === undefined) return undefined
    return ttlSeconds === 0 ? null : DateTime.addDuration(now, Duration.seconds(ttlSeconds))
  })

/** The memory and vCPUs of this start: the overrides over the record's. */
const launchResources = (workspace: Workspace, options: StartOptions) => {
  const profile = options.profile === undefined ? undefined : profiles[options.profile]
  const memoryMiB = options.memoryMiB ?? profile?.memoryMiB ?? workspace.resources.memoryMiB
  const cpus = options.cpus ?? profile?.cpus ?? workspace.resources.cpus
  if (!Number.isInteger(memoryMiB) || memoryMiB < 64 || !Number.isInteger(cpus) || cpus < 1 || cpus > 256) {
    return Effect.fail(
      new InvalidInput({
        message: `invalid resources for this start: ${memoryMiB} MiB, ${cpus} vCPU`,
        remediation: "give --memory 64 or more (MiB) and --cpus from 1 to 256"
      })
    )
  }
  return Effect.succeed({ memoryMiB, cpus })
}

/**
 * The egress mediation a start needs, made ready (namespace, tap, rules, mediator), or undefined for
 * a workspace that is not mediated. A real backend without the Egress service fails closed.
 */
const prepareEgress = (workspace: Workspace, backend: string) =>
  Effect.gen(function*() {
    const egress = yield* Effect.serviceOption(Egress)
    if (Option.isSome(egress)) return yield* egress.value.prepare(workspace)
    const policy = workspace.egress ?? defaultEgress
    if (backend === "fake" || workspace.network !== "user" || policy.mode === "off") return undefined
    return yield* new Unsupported({
      message: `the ${backend} backend has no egress mediation here`,
      remediation: "start with --egress off to run without mediation",
      backend,
      feature: "egress mediation"
    })
  })

/** Before anything changes: a mediated workspace on a host that cannot mediate fails here. */
const preflightEgress = (workspace: Workspace) =>
  Effect.gen(function*() {
    const egress = yield* Effect.serviceOption(Egress)
    const policy = workspace.egress ?? defaultEgress
    if (Option.isNone(egress) || workspace.network !== "user" || policy.mode === "off") return
    const problem = yield* egress.value.problem
    if (problem !== undefined) {
      return yield* new Unsupported({ ...problem, feature: "egress mediation" })
    }
  })

const releaseEgress = (workspace: string) =>
  Effect.serviceOption(Egress).pipe(
    Effect.flatMap((egress) => Option.isSome(egress) ? egress.value.release(workspace) : Effect.void)
  )

const describe = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

export const start = Effect.fn("start")(function*(name: string, options: StartOptions = {}) {
  const store = yield* StateStore
  const hypervisor = yield* Hypervisor
  const home = yield* Home

  const current = yield* store.get(name).pipe(Effect.flatMap(reconcile))
  yield* requireBackend(current)
  const lease = yield* checkLease(current, options.ttlSeconds)
  const resources = yield* launchResources(current, options)
  // A VMM left by an earlier start that died half way holds the disk: it goes before a new one boots.
  yield* reapOrphanVmms({ workspace: name })
  const secrets = mergeRefs(current.secrets, options.secrets ?? [])
  yield* checkSecretValues(name, secrets, options.secretValues ?? [])
  yield* checkMounts(current)
  yield* checkFileSources(current.files)
  // A host port in use, or named networks this host cannot plumb, fail here: nothing has changed yet.
  yield* preflightNetworking(current)
  yield* preflightEgress(current)
  // The kernel and the initramfs carrying the guest agent, for backends that boot one; installed
  // before the workspace changes state, so a slow first install leaves nothing half-started.
  const kernels = yield* Effect.serviceOption(KernelCache)
  const boot = Option.isSome(kernels)
    ? yield* kernels.value.ensure(process.arch === "arm64" ? "aarch64" : "x86_64").pipe(
      Effect.map((artifacts) => ({
        kernelPath: artifacts.kernelPath,
        initrdPath: artifacts.initrdPath,
        ...(artifacts.kernelHz === undefined ? {} : { kernelHz: artifacts.kernelHz })
      }))
    )
    : {}
  // Under the disk's claim: an offline cp, commit or resize running now makes this a conflict, and one
  // that claims the disk after this sees the workspace starting.
  const starting = yield* Effect.scoped(
    Effect.zipRight(
      claimDisk(name, "a start"),
      store.transition(name, "start", {
        patch: (ws) =>
          ownedByMe(
            {
              ...ws,
              secrets,
              sessionId: randomUUID(),
              vm: undefined,
              failure: undefined,
              serviceStatus: undefined,
              launched: resources.memoryMiB === ws.resources.memoryMiB && resources.cpus === ws.resources.cpus
                ? undefined
                : new Resources({ ...ws.resources, ...resources }),
              ...(lease === undefined ? {} : { expiresAt: lease ?? undefined })
            } as Workspace
          ),
        detail: `backend ${hypervisor.backend}`
      })
    )
  )
  const runtimeDir = yield* home.ensureDir(starting.runtimeDir)
  // A new session starts with a fresh console log.
  NodeFs.rmSync(NodePath.join(runtimeDir, "console.log"), { force: true })

  const config = new LaunchConfig({
    ...boot,
    workspace: starting.name,
    runtimeDir,
    rootfsPath: starting.rootfsPath,
    memoryMiB: resources.memoryMiB,
    cpus: resources.cpus,
    hostname: starting.hostname,
    network: starting.network,
    ports: starting.ports.map((p) => new PortForward(p)),
    bootTimeoutSeconds: options.bootTimeoutSeconds ?? 60
  })

  return yield* Effect.uninterruptibleMask((restore) =>
    Effect.gen(function*() {
      // Secrets go in as soon as the guest answers; a VM that did not get them does not stay up.
      const launched = yield* Effect.exit(restore(
        attachMounts(starting, runtimeDir).pipe(
          Effect.zip(prepareEgress(starting, hypervisor.backend)),
          Effect.flatMap(([disks, egress]) =>
            launchWithNetworks(starting, (nics) =>
              hypervisor.launch(
                new LaunchConfig({ ...config, disks, nics, ...(egress === undefined ? {} : { egress }) })
              ).pipe(
                Effect.tap((handle) =>
                  deliverSecrets(name, handle, options.secretValues ?? []).pipe(
                    // Files land before anything of the workspace's own runs.
                    Effect.zipRight(deliverFiles(name, handle, starting.files)),
                    Effect.tapError(() => hypervisor.kill(handle).pipe(Effect.ignore))
                  )
                )
              ))
          )
        )
      ))
      if (Exit.isFailure(launched)) {
        yield* releaseMounts(starting)
        yield* releaseEgress(name)
        yield* store.transition(name, "bootFailed", {
          patch: withoutOwner,
          detail: Exit.isInterrupted(launched) ? "start interrupted" : describe(launched.cause)
        }).pipe(Effect.ignore)
        return yield* Effect.failCause(launched.cause)
      }
      const handle: VmHandle = launched.value
      const running = yield* store.transition(name, "booted", {
        patch: (ws) => withoutOwner({ ...ws, vm: handle } as Workspace),
        detail: `pid ${handle.pid}`
      }).pipe(
        // Someone else moved the workspace (a kill, say) while it booted: this VM must not outlive that.
        Effect.tapError(() =>
          hypervisor.kill(handle).pipe(Effect.ignore, Effect.zipRight(releaseMounts(starting)))
        )
      )
      return running
    })
  ).pipe(
    // Pending setup first; a failing step stops the VM (setup stays pending) and fails this start.
    Effect.flatMap((running) =>
      runSetup(running).pipe(Effect.tapError(() => kill(name).pipe(Effect.ignore)))
    ),
    // The service next, so that the entrypoint finds it; a service that cannot be launched stops the VM.
    Effect.flatMap((running) =>
      launchService(running).pipe(Effect.tapError(() => kill(name).pipe(Effect.ignore)))
    ),
    // In the background: the start is done once the entrypoint is launched (see Entrypoint.ts).
    Effect.flatMap((running) =>
      running.entrypoint === undefined ? Effect.succeed(running) : launchEntrypoint(running)
    )
  )
})

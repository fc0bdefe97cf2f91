/**
 * `start`: boot a workspace's VM from its disk. The `start` transition is the admission check: of two
 * concurrent starts, one wins and the other gets `Conflict`. Failure or interruption at any point
 * kills whatever was launched and records `failed`; the store never says `running` for a VM that is not.
 */
import { DateTime, Duration, Effect, Either, Exit, Option } from "effect"
import { randomUUID } from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { defaultEgress } from "../domain/Egress.ts"
import { Conflict, InvalidInput, Permanent, Unsupported } from "../domain/Errors.ts"
import type { StartRequest } from "../domain/Requests.ts"
import { mergeRefs } from "../domain/SecretRefs.ts"
import { restoreRefusal } from "../domain/SnapshotRestore.ts"
import { profiles, Resources, type Workspace } from "../domain/Workspace.ts"
import { Egress, type EgressAttachment } from "../services/Egress.ts"
import { Home } from "../services/Home.ts"
import {
  guestDiskList,
  guestModelPort,
  guestNicList,
  Hypervisor,
  LaunchConfig,
  PortForward,
  type VmHandle
} from "../services/Hypervisor.ts"
import { KernelCache } from "../services/KernelCache.ts"
import { StateStore } from "../services/StateStore.ts"
import { launchEntrypoint } from "./Entrypoint.ts"
import { kill } from "./Halt.ts"
import { attachBroker, guestValues, preflightBroker, releaseBroker } from "./internal/Brokering.ts"
import { claimDisk } from "./internal/DiskClaim.ts"
import {
  copyDisk,
  putBack,
  removePath,
  removeState,
  replaceDisk,
  resumeStateFile
} from "./internal/DiskCopy.ts"
import { pendingDisk, shareDisk, shareLargeDisk } from "./internal/DiskOverlay.ts"
import { installEgressCa } from "./internal/EgressCa.ts"
import { checkFileSources, deliverFiles } from "./internal/FileDelivery.ts"
import { type Freshened, freshenGuest, guestNetworkOf } from "./internal/Freshen.ts"
import { attachModel, ensureModelRunner, releaseModel } from "./internal/ModelPairing.ts"
import { attachMounts, checkMounts, releaseMounts } from "./internal/Mounts.ts"
import { launchWithNetworks, preflightNetworking } from "./internal/NetworkPlumbing.ts"
import { reapOrphanVmms } from "./internal/Orphans.ts"
import { ownedByMe, reconcile, requireBackend, withoutOwner } from "./internal/Reconcile.ts"
import { checkSecretValues, deliverSecrets, type SecretValues } from "./internal/SecretDelivery.ts"
import { launchService } from "./Service.ts"
import { runSetup } from "./Setup.ts"
import { type LoadedSnapshot, loadSnapshot } from "./Snapshot.ts"
import { discardTemplate, planWarmStart } from "./Templates.ts"

/** A start's request (domain/Requests.ts) without the name. */
export type StartOptions = Omit<StartRequest, "name">

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

/**
 * The memory and vCPUs of this start: the overrides over the record's, or over the captured ones when
 * it resumes a memory snapshot (whose memory only fits the machine it came from).
 */
const launchResources = (workspace: Workspace, options: StartOptions, captured?: Resources) => {
  const profile = options.profile === undefined ? undefined : profiles[options.profile]
  const base = captured ?? workspace.resources
  const memoryMiB = options.memoryMiB ?? profile?.memoryMiB ?? base.memoryMiB
  const cpus = options.cpus ?? profile?.cpus ?? base.cpus
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
const prepareEgress = (workspace: Workspace, backend: string, values: SecretValues) =>
  Effect.gen(function*() {
    const egress = yield* Effect.serviceOption(Egress)
    if (Option.isSome(egress)) return yield* egress.value.prepare(workspace, values)
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

/** What a restore is checked against: this host's backend and kernel, and the start's resources. */
interface RestoreTarget {
  readonly backend: string
  readonly kernelSha256: string | undefined
  readonly resources: { readonly memoryMiB: number; readonly cpus: number }
}

/**
 * Checks that `snapshot` can be restored onto this workspace here (restoreRefusal), then copies its
 * disk beside the workspace's; returns the copy's path, renamed over the disk once the start is
 * admitted. The workspace's own disk is untouched until then.
 */
const prepareRollback = (
  workspace: Workspace,
  snapshot: LoadedSnapshot,
  target: RestoreTarget
) =>
  Effect.gen(function*() {
    const { manifest } = snapshot
    const refusal = restoreRefusal(manifest, {
      backend: target.backend,
      kernelSha256: target.kernelSha256,
      memoryMiB: target.resources.memoryMiB
    })
    if (Either.isLeft(refusal)) return yield* refusal.left
    if (manifest.kind === "memory") {
      if (snapshot.state === undefined) {
        return yield* new Permanent({ message: `memory snapshot ${manifest.tag} has no VM state file` })
      }
      if (target.resources.cpus !== manifest.resources.cpus) {
        return yield* new Conflict({
          message:
            `snapshot ${manifest.workspace}:${manifest.tag} was captured with ${manifest.resources.cpus} vCPUs, this start asks for ${target.resources.cpus}`,
          remediation: `start it with --cpus ${manifest.resources.cpus} (the captured count)`
        })
      }
      // Attached disks and named networks are refused at capture; the record may have changed since.
      if (workspace.mounts.length > 0 || workspace.networks.length > 0) {
        return yield* new Unsupported({
          message:
            `workspace ${workspace.name} has attached disks or named networks, which its memory snapshot ${manifest.tag} did not capture`,
          remediation: "restore a disk snapshot instead (taken while halted)",
          backend: target.backend,
          feature: "memory restore with attached disks or named networks"
        })
      }
    }
    // The disk is swapped by a rename that keeps the previous one until the start is known to work. The
    // new one shares the snapshot's blocks as a fork's child does (a reflink, else an overlay over a
    // base that outlives the snapshot), else it is a copy.
    return yield* pendingDisk(workspace.rootfsPath, `restore-${manifest.tag}`, (to) =>
      shareDisk(snapshot.disk, to))
  })

/** A copy's pending resume: the same checks as a roll back to a memory snapshot (restoreRefusal). */
const checkResume = (
  workspace: Workspace,
  resume: NonNullable<Workspace["pendingResume"]>,
  stateFile: string | undefined,
  target: RestoreTarget
) =>
  Effect.gen(function*() {
    const remediation =
      `delete it and create it again from a disk snapshot, or boot its disk as it is: microagent clone ${workspace.name} NEW`
    if (stateFile === undefined || !NodeFs.existsSync(stateFile)) {
      return yield* new Permanent({
        message: `workspace ${workspace.name} should resume ${resume.snapshot}, and its VM state is missing`,
        remediation
      })
    }
    if (
      resume.kernelSha256 !== undefined && target.kernelSha256 !== undefined
      && resume.kernelSha256 !== target.kernelSha256
    ) {
      return yield* new Unsupported({
        message: `workspace ${workspace.name} resumes ${resume.snapshot}, whose guest ran kernel sha256 ${
          resume.kernelSha256.slice(0, 12)
        }…; this host would run ${target.kernelSha256.slice(0, 12)}…`,
        remediation,
        backend: target.backend,
        feature: "memory restore across kernels"
      })
    }
    if (
      target.resources.memoryMiB !== resume.resources.memoryMiB
      || target.resources.cpus !== resume.resources.cpus
    ) {
      return yield* new Conflict({
        message:
          `workspace ${workspace.name} resumes a VM of ${resume.resources.memoryMiB} MiB and ${resume.resources.cpus} vCPUs; this start asks for ${target.resources.memoryMiB} MiB and ${target.resources.cpus}`,
        remediation: "start it without --memory, --cpus or --profile"
      })
    }
    // Secrets are fine: the captured memory holds none (wiped before the capture), and they are
    // delivered after the resume like after a boot.
    if (workspace.mounts.length > 0 || workspace.networks.length > 0) {
      return yield* new Unsupported({
        message:
          `workspace ${workspace.name} resumes a memory snapshot and now has attached disks or named networks, which that memory does not hold`,
        remediation,
        backend: target.backend,
        feature: "memory restore with attached disks or named networks"
      })
    }
  })

const describeFreshened = (freshened: Freshened | undefined) =>
  freshened === undefined
    ? "guest not freshened"
    : `clock ${freshened.clock ? "set" : "not set"}, rng ${freshened.rng ? "reseeded" : "not reseeded"}${
      freshened.problems.length === 0 ? "" : ` (${freshened.problems.join("; ")})`
    }`

/**
 * The template's disk beside the workspace's, renamed over it once the start is admitted: shared
 * when it is large (as the image's was at create), else a copy.
 */
const prepareWarmDisk = (workspace: Workspace, disk: string) =>
  pendingDisk(workspace.rootfsPath, "warm", (to) =>
    Effect.flatMap(
      shareLargeDisk(disk, to),
      (shared) =>
        shared === undefined ? Effect.as(copyDisk(disk, to), "copy" as const) : Effect.succeed(shared)
    ))

const describe = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

export const start = Effect.fn("start")(function*(name: string, options: StartOptions = {}) {
  const store = yield* StateStore
  const hypervisor = yield* Hypervisor
  const home = yield* Home

  const current = yield* store.get(name).pipe(Effect.flatMap(reconcile))
  yield* requireBackend(current)
  const lease = yield* checkLease(current, options.ttlSeconds)
  const snapshot = options.fromSnapshot === undefined
    ? undefined
    : yield* loadSnapshot(name, options.fromSnapshot)
  // A copy made by `create --from-snapshot` of a memory snapshot resumes that VM on its first start.
  const resume = snapshot === undefined ? current.pendingResume : undefined
  const memoryRestore = (snapshot !== undefined && snapshot.manifest.kind === "memory")
    || resume !== undefined
  const resources = yield* launchResources(
    current,
    options,
    snapshot !== undefined && snapshot.manifest.kind === "memory"
      ? snapshot.manifest.resources
      : resume?.resources
  )
  const stateFile = snapshot !== undefined
    ? snapshot.state
    : resume === undefined
    ? undefined
    : NodePath.join(home.workspaceDir(name), resumeStateFile)
  // A VMM left by an earlier start that died half way holds the disk: it goes before a new one boots.
  yield* reapOrphanVmms({ workspace: name })
  const secrets = mergeRefs(current.secrets, options.secrets ?? [])
  yield* checkSecretValues(name, secrets, options.secretValues ?? [])
  yield* checkMounts(current)
  yield* checkFileSources(current.files)
  // A host port in use, or named networks this host cannot plumb, fail here: nothing has changed yet.
  yield* preflightNetworking(current)
  yield* preflightEgress(current)
  yield* preflightBroker(current)
  // A paired model's runner is up before the VM boots (pulling the model if the store lost it).
  const modelChannel = yield* ensureModelRunner(current)
  // The kernel and the initramfs carrying the guest agent, for backends that boot one; installed
  // before the workspace changes state, so a slow first install leaves nothing half-started.
  const kernels = yield* Effect.serviceOption(KernelCache)
  const artifacts = Option.isSome(kernels)
    ? yield* kernels.value.ensure(process.arch === "arm64" ? "aarch64" : "x86_64")
    : undefined
  const boot = artifacts === undefined ? {} : {
    kernelPath: artifacts.kernelPath,
    initrdPath: artifacts.initrdPath,
    ...(artifacts.kernelHz === undefined ? {} : { kernelHz: artifacts.kernelHz })
  }
  // Before anything changes: a snapshot this host cannot resume is refused, and its disk is copied
  // beside the workspace's (the current disk is replaced only once the start is admitted).
  if (resume !== undefined) {
    yield* checkResume(current, resume, stateFile, {
      backend: hypervisor.backend,
      kernelSha256: artifacts?.kernelSha256,
      resources
    })
  }
  // A first start on the image's disk restores a template instead of booting, when one fits (built
  // now if missing); its disk, the one the template's guest had mounted, replaces the workspace's.
  const warm = snapshot === undefined && resume === undefined
    ? yield* planWarmStart(current, {
      cold: options.cold === true,
      resources,
      artifacts,
      modelChannel
    })
    : undefined
  const template = warm?._tag === "Warm" ? warm.template : undefined
  if (warm?._tag === "Cold" && warm.buildFailed === true) {
    yield* store.appendEvent(name, { type: "warm", detail: `booting: ${warm.reason}` }).pipe(Effect.ignore)
  }
  const pending = snapshot === undefined
    ? template === undefined ? undefined : yield* prepareWarmDisk(current, template.disk)
    : yield* prepareRollback(current, snapshot, {
      backend: hypervisor.backend,
      kernelSha256: artifacts?.kernelSha256,
      resources
    })
  // Admitted (the `start` transition) from here: every failure records `failed` and stops the VM.
  const admitted = Effect.gen(function*() {
    const owned = yield* ownedByMe
    // Under the disk's claim: an offline cp, commit or resize running now makes this a conflict, and
    // one that claims the disk after this sees the workspace starting.
    const starting = yield* Effect.scoped(Effect.zipRight(
      claimDisk(name, "a start"),
      store.transition(name, "start", {
        patch: (ws) =>
          owned(
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
    ))
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
      ...(starting.addressing === undefined ? {} : { addressing: starting.addressing }),
      ports: starting.ports.map((p) => new PortForward(p)),
      bootTimeoutSeconds: options.bootTimeoutSeconds ?? 60,
      ...(modelChannel ? { modelChannel: true } : {}),
      ...(starting.brokers.length === 0 ? {} : { brokerPorts: starting.brokers.map((b) => b.guestPort) })
    })

    return yield* Effect.uninterruptibleMask((restore) =>
      Effect.gen(function*() {
        // Secrets go in as soon as the guest answers; a VM that did not get them does not stay up.
        let freshened: Freshened | undefined
        let warmFailed = false
        let previousDisk: string | undefined
        // The VMM as soon as one runs: an interruption before the start ends (which no tapError sees)
        // must not leave it behind a record that says `failed`.
        let vmm: VmHandle | undefined
        // The egress attachment the running VM has (a boot after a failed restore gets a new one).
        let attachedEgress: EgressAttachment | undefined
        const holding = <E, R>(launching: Effect.Effect<VmHandle, E, R>) =>
          Effect.tap(launching, (handle) => Effect.sync(() => (vmm = handle)))
        // One type for both branches: a union here left the pipe below to inference that failed.
        const swapDisk: Effect.Effect<void, Permanent> = pending === undefined
          ? Effect.void
          : replaceDisk(pending.path, starting.rootfsPath, pending.format).pipe(
            Effect.tap((previous) => (previousDisk = previous)),
            Effect.asVoid
          )
        const launched = yield* Effect.exit(restore(
          swapDisk.pipe(
            Effect.zipRight(attachMounts(starting, runtimeDir)),
            Effect.zip(prepareEgress(starting, hypervisor.backend, options.secretValues ?? [])),
            Effect.flatMap(([disks, egress]) =>
              launchWithNetworks(starting, (nics) => {
                attachedEgress = egress
                const full = new LaunchConfig({
                  ...config,
                  disks,
                  nics,
                  ...(egress === undefined ? {} : { egress })
                })
                // The mediator watched the VMM that did not come up and left with it: the next boot
                // (after a failed restore, or the backend's second boot of a stalled one) gets its own.
                const egressAgain = egress === undefined ? Effect.succeed(full) : releaseEgress(name).pipe(
                  Effect.zipRight(prepareEgress(starting, hypervisor.backend, options.secretValues ?? [])),
                  Effect.tap((again) => (attachedEgress = again)),
                  Effect.map((again) =>
                    new LaunchConfig({ ...full, ...(again === undefined ? {} : { egress: again }) })
                  )
                )
                return (template !== undefined
                  // Warm: the template's guest, made this workspace's before it counts as running. A
                  // one-shot run maps the template's memory copy-on-write; a kept workspace copies it
                  // (its own captures then save memory as a file).
                  ? holding(hypervisor.restore(full, template.state, { ownMemory: !starting.ephemeral }))
                    .pipe(
                      Effect.tapError(() => discardTemplate(template)),
                      Effect.tap((handle) =>
                        freshenGuest(name, handle, {
                          hostname: starting.hostname,
                          network: guestNetworkOf(starting, egress !== undefined),
                          disks: guestDiskList(disks),
                          nets: guestNicList(nics),
                          forwarders: !modelChannel && starting.brokers.length === 0 ? undefined : {
                            ...(modelChannel ? { modelPort: guestModelPort } : {}),
                            brokerPorts: starting.brokers.map((b) => b.guestPort)
                          }
                        }).pipe(
                          Effect.tap((result) => (freshened = result)),
                          Effect.tapError(() => hypervisor.kill(handle).pipe(Effect.ignore))
                        )
                      ),
                      // A template that does not restore costs only the warm start: its disk boots.
                      Effect.catchAll((error) =>
                        store.appendEvent(name, {
                          type: "warm",
                          detail:
                            `template ${template.manifest.key} did not restore, booting: ${error.message}`
                        }).pipe(
                          Effect.ignore,
                          Effect.zipRight(Effect.sync(() => (warmFailed = true))),
                          Effect.zipRight(egressAgain),
                          Effect.flatMap((booting) =>
                            holding(hypervisor.launch(booting, { beforeSecondBoot: egressAgain }))
                          )
                        )
                      )
                    )
                  : memoryRestore && stateFile !== undefined
                  // The captured VM was booted with its own hostname on the kernel command line.
                  ? holding(hypervisor.restore(
                    resume === undefined ? full : new LaunchConfig({ ...full, hostname: resume.hostname }),
                    stateFile
                  )).pipe(
                    // The resumed guest gets the host's clock and fresh entropy before it counts as
                    // running, and a copy its own hostname and machine-id.
                    Effect.tap((handle) =>
                      freshenGuest(
                        name,
                        handle,
                        resume === undefined
                          ? undefined
                          : {
                            hostname: starting.hostname,
                            network: guestNetworkOf(starting, egress !== undefined)
                          }
                      ).pipe(
                        Effect.tap((result) => (freshened = result)),
                        Effect.tapError(() => hypervisor.kill(handle).pipe(Effect.ignore))
                      )
                    )
                  )
                  : holding(hypervisor.launch(full, { beforeSecondBoot: egressAgain }))).pipe(
                    Effect.tap((handle) =>
                      deliverSecrets(name, handle, guestValues(starting, options.secretValues ?? [])).pipe(
                        // Under mitm the guest trusts this start's interceptor before anything runs.
                        Effect.zipRight(installEgressCa(name, handle, attachedEgress?.caPem)),
                        // Files land before anything of the workspace's own runs; a resumed guest's
                        // processes already run, with the files they had when it was captured.
                        Effect.zipRight(
                          memoryRestore ? Effect.void : deliverFiles(name, handle, starting.files)
                        ),
                        Effect.tapError(() => hypervisor.kill(handle).pipe(Effect.ignore))
                      )
                    )
                  )
              })
            )
          )
        ))
        if (Exit.isFailure(launched)) {
          // Already killed on a failure; not on an interruption after the launch.
          if (vmm !== undefined) yield* hypervisor.kill(vmm).pipe(Effect.ignore)
          // A roll back that did not start gives the workspace its disk back.
          if (previousDisk !== undefined) {
            yield* putBack(previousDisk, starting.rootfsPath).pipe(Effect.ignore)
          }
          yield* releaseMounts(starting)
          yield* releaseEgress(name)
          yield* releaseModel(starting)
          yield* releaseBroker(starting)
          yield* store.transition(name, "bootFailed", {
            patch: withoutOwner,
            detail: Exit.isInterrupted(launched) ? "start interrupted" : describe(launched.cause)
          }).pipe(Effect.ignore)
          return yield* Effect.failCause(launched.cause)
        }
        const handle: VmHandle = launched.value
        const running = yield* store.transition(name, "booted", {
          // A resume is used once: the next start boots from the disk.
          patch: (ws) => withoutOwner({ ...ws, vm: handle, pendingResume: undefined } as Workspace),
          detail: resume !== undefined
            ? `pid ${handle.pid}, resumed from snapshot ${resume.snapshot}`
            : snapshot === undefined
            ? `pid ${handle.pid}`
            : `pid ${handle.pid}, ${
              memoryRestore ? "resumed" : "booted"
            } from snapshot ${snapshot.manifest.tag}`
        }).pipe(
          // Someone else moved the workspace (a kill, say) while it booted: this VM must not outlive that.
          Effect.tapError(() =>
            hypervisor.kill(handle).pipe(
              Effect.ignore,
              Effect.zipRight(releaseMounts(starting)),
              Effect.zipRight(
                previousDisk === undefined
                  ? Effect.void
                  : putBack(previousDisk, starting.rootfsPath).pipe(Effect.ignore)
              )
            )
          )
        )
        // The model bridge holds the runner while the VM runs; without it the start fails.
        yield* attachModel(running, handle).pipe(Effect.tapError(() => kill(name).pipe(Effect.ignore)))
        // The broker holds the brokered secrets' values while the VM runs; without it the start fails.
        yield* attachBroker(running, handle, options.secretValues ?? []).pipe(
          Effect.tapError(() => kill(name).pipe(Effect.ignore))
        )
        // Running on the restored disk: the previous one goes; so does a used resume state.
        if (previousDisk !== undefined) yield* removePath(previousDisk)
        // (A roll back also ends a pending resume, which the `booted` patch cleared.)
        if (current.pendingResume !== undefined) {
          yield* removeState(NodePath.join(home.workspaceDir(name), resumeStateFile))
        }
        if (template !== undefined && !warmFailed) {
          yield* store.appendEvent(name, {
            type: "warm",
            detail: `restored template ${template.manifest.key}${
              warm?._tag === "Warm" && warm.built ? " (built by this start)" : ""
            }; ${describeFreshened(freshened)}`
          }).pipe(Effect.ignore)
        }
        if (snapshot !== undefined || resume !== undefined) {
          yield* store.appendEvent(name, {
            type: "snapshot",
            detail: `restored ${
              resume !== undefined
                ? `${resume.snapshot} (memory, as ${starting.hostname})`
                : `${snapshot!.manifest.tag} (${snapshot!.manifest.kind})`
            }${freshened === undefined ? "" : `; ${describeFreshened(freshened)}`}`
          }).pipe(Effect.ignore)
        }
        return running
      })
    ).pipe(
      // Pending setup first; a failing step stops the VM (setup stays pending) and fails this start.
      Effect.flatMap((running) =>
        runSetup(running).pipe(Effect.tapError(() => kill(name).pipe(Effect.ignore)))
      ),
      // The service next, so that the entrypoint finds it; a service that cannot be launched stops the
      // VM. A resumed guest's service loop is in the captured memory, running already.
      Effect.flatMap((running) =>
        memoryRestore
          ? Effect.succeed(running)
          : launchService(running).pipe(Effect.tapError(() => kill(name).pipe(Effect.ignore)))
      ),
      // In the background: the start is done once the entrypoint is launched (see Entrypoint.ts).
      // A resumed guest's entrypoint is already running (or done): it is in the captured memory.
      Effect.flatMap((running) =>
        running.entrypoint === undefined || memoryRestore
          ? Effect.succeed(running)
          : launchEntrypoint(running)
      )
    )
  })

  return yield* admitted.pipe(
    Effect.ensuring(pending === undefined ? Effect.void : removePath(pending.path))
  )
})

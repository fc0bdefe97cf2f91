/**
 * `create`: a persistent workspace with its own root disk, in state `prepared`.
 */
import { DateTime, Duration, Effect } from "effect"
import { randomBytes } from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { addressingOf } from "../domain/Addressing.ts"
import { brokerEnv, checkBrokers } from "../domain/Broker.ts"
import { allowProblem, EgressPolicy } from "../domain/Egress.ts"
import { InvalidInput, Permanent } from "../domain/Errors.ts"
import { validateMounts } from "../domain/MountFlag.ts"
import { demandOf } from "../domain/Placement.ts"
import type { CreateRequest } from "../domain/Requests.ts"
import { validateSecretRefs } from "../domain/SecretRefs.ts"
import {
  type BrokerEndpoint,
  defaultCpus,
  defaultResources,
  ImageInfo,
  nameProblem,
  profiles,
  Resources,
  Workspace,
  type WorkspaceName
} from "../domain/Workspace.ts"
import { faultPoint } from "../services/Faults.ts"
import { Home } from "../services/Home.ts"
import { Hypervisor } from "../services/Hypervisor.ts"
import { ImageStore } from "../services/ImageStore.ts"
import { Processes } from "../services/Processes.ts"
import { StateStore } from "../services/StateStore.ts"
import { shareLargeDisk } from "./internal/DiskOverlay.ts"
import { resolveFileCopies } from "./internal/FileDelivery.ts"
import { modelEnv, resolvePairing } from "./internal/ModelPairing.ts"
import { generateName } from "./internal/Names.ts"
import { checkOutputs } from "./internal/Outputs.ts"
import { stagingName } from "./internal/Staging.ts"
import { checkNetworking, joinNetworks } from "./Network.ts"

const MiB = 1024 * 1024

/** A create's request (domain/Requests.ts), and what `run` adds to it. */
export interface CreateOptions extends CreateRequest {
  /** One-shot workspaces of `run`. */
  readonly ephemeral?: boolean | undefined
  /** A generated name starts with this (default `ws`). */
  readonly namePrefix?: string | undefined
}

/** Hostnames are the workspace name made DNS-safe. */
export const hostnameFor = (name: string) =>
  name.toLowerCase().replace(/[^a-z0-9-]/g, "-").replace(/^-+|-+$/g, "").slice(0, 63) || "workspace"

export const resolveResources = (
  options: Pick<CreateOptions, "profile" | "memoryMiB" | "cpus" | "sizeMiB">,
  fallbackCpus: number = defaultResources.cpus
) => {
  const sizeMiB = options.sizeMiB
    ?? (options.profile === undefined ? undefined : profiles[options.profile].sizeMiB)
  return new Resources({
    ...demandOf(options, fallbackCpus),
    ...(sizeMiB === undefined ? {} : { sizeMiB })
  })
}

/** A lease is a non-negative number of seconds; 0 means none. */
export const checkTtl = (ttlSeconds: number | undefined) =>
  ttlSeconds === undefined || (Number.isFinite(ttlSeconds) && ttlSeconds >= 0)
    ? Effect.void
    : Effect.fail(
      new InvalidInput({
        message: `invalid --ttl ${ttlSeconds}: a lease is a duration (30m, 7d) or a number of seconds`,
        remediation: "give --ttl 30m, --ttl 7d, or --ttl 0 for no lease"
      })
    )

/** Each endpoint's CA bundle is a readable file now (the broker reads it at every start). */
const checkBrokerFiles = (brokers: ReadonlyArray<BrokerEndpoint>) =>
  Effect.forEach(brokers, (endpoint) =>
    endpoint.ca === undefined ? Effect.void : Effect.try({
      try: () => {
        if (!NodeFs.statSync(endpoint.ca!).isFile()) throw new Error("not a regular file")
        NodeFs.accessSync(endpoint.ca!, NodeFs.constants.R_OK)
      },
      catch: (cause) =>
        new InvalidInput({
          message: `broker ca=${endpoint.ca}: ${cause instanceof Error ? cause.message : String(cause)}`,
          remediation: "give a readable PEM file"
        })
    }), { discard: true })

/** A service and a shell are non-empty; an HTTP health check probes a port the workspace publishes. */
const checkSupervision = (options: CreateOptions) =>
  Effect.gen(function*() {
    if (options.service !== undefined && options.service.trim() === "") {
      return yield* new InvalidInput({
        message: "the service command is empty",
        remediation: "give a shell command: --service-command 'python3 -m http.server 8080'"
      })
    }
    if (options.shell !== undefined && !/^\/\S*$/.test(options.shell)) {
      return yield* new InvalidInput({
        message: `the shell ${JSON.stringify(options.shell)} is not an absolute guest path`,
        remediation: "give one like /bin/bash"
      })
    }
    const httpGet = options.health?.httpGet
    if (httpGet !== undefined && !(options.ports ?? []).some((p) => p.guestPort === httpGet.port)) {
      return yield* new InvalidInput({
        message:
          `the HTTP health check probes guest port ${httpGet.port}, which the workspace does not publish`,
        remediation: `publish it: -p ${httpGet.port}:${httpGet.port} (or network.forwards in the spec)`
      })
    }
  })

const removeTree = (path: string) => Effect.sync(() => NodeFs.rmSync(path, { recursive: true, force: true }))

/**
 * Everything `create` checks before it touches anything: the name, resources, lease, mounts, secrets,
 * networking, egress, outputs and host files (`run --dry-run` checks the same).
 */
/**
 * Credential swaps and passthrough destinations belong to `--egress mitm`; every swap reads a secret
 * the workspace holds on the host (`use: broker`), never one delivered into the guest.
 */
const checkSwaps = (options: CreateOptions) =>
  Effect.gen(function*() {
    const egress = options.egress
    if (egress === undefined) return
    if (egress.swaps.length > 0 && egress.mode !== "mitm") {
      return yield* new InvalidInput({
        message:
          `credential swaps (--cred-swap, --egress-swap-config) need --egress mitm, not ${egress.mode}`,
        remediation: "add --egress mitm, or use --broker (no interception) for the credential"
      })
    }
    if (egress.passthrough.length > 0 && egress.mode === "off") {
      return yield* new InvalidInput({
        message: "--egress off has no passthrough: --egress-passthrough needs mediation",
        remediation: "drop --egress off, or the passthrough destinations"
      })
    }
    const bad = egress.passthrough.map(allowProblem).filter((p) => p !== undefined)
    if (bad.length > 0) {
      return yield* new InvalidInput({
        message: `invalid --egress-passthrough: ${bad.join("; ")}`,
        remediation: "use host, .suffix (apex and subdomains) or A.B.C.D[/N], each with an optional :port"
      })
    }
    const held = new Set((options.secrets ?? []).filter((s) => s.use === "broker").map((s) => s.name))
    const unheld = egress.swaps.filter((s) => !held.has(s.secret))
    if (unheld.length > 0) {
      return yield* new InvalidInput({
        message: `credential swap ${
          unheld.map((s) => `${s.name} reads ${s.secret}`).join(", ")
        }, which is not a host-held secret of the workspace`,
        remediation: "give the secret with use: broker (the CLI's --cred-swap does)"
      })
    }
  })

export const checkCreate = Effect.fn("checkCreate")(function*(options: CreateOptions) {
  const name = options.name ?? generateName(options.namePrefix ?? "ws")
  const problem = nameProblem(name)
  if (problem !== undefined) {
    return yield* new InvalidInput({
      message: `invalid workspace name: ${problem}`,
      remediation:
        "names are 1-63 characters: letters, digits, '.', '_' and '-', starting with a letter or digit"
    })
  }
  const fallbackCpus = yield* defaultCpus.pipe(
    Effect.mapError((error) =>
      new InvalidInput({
        message: `invalid MICROAGENT_DEFAULT_CPUS in the runtime's environment: ${String(error)}`,
        remediation: "set it to a whole number from 1 to 256, or unset it for 2, and start the runtime again"
      })
    )
  )
  const resources = yield* Effect.try({
    try: () => resolveResources(options, fallbackCpus),
    catch: (cause) =>
      new InvalidInput({
        message: `invalid resources: ${String(cause)}`,
        remediation: "see `microagent profiles`"
      })
  })
  yield* checkTtl(options.ttlSeconds)
  yield* validateMounts(options.mounts)
  yield* validateSecretRefs(options.secrets)
  yield* checkBrokers(
    options.brokers ?? [],
    options.secrets ?? [],
    options.egress?.swaps.map((s) => s.secret)
  )
  yield* checkBrokerFiles(options.brokers ?? [])
  yield* checkNetworking(options)
  const badAllow = (options.egress?.allow ?? []).map(allowProblem).filter((p) => p !== undefined)
  if (badAllow.length > 0) {
    return yield* new InvalidInput({
      message: `invalid --egress-allow: ${badAllow.join("; ")}`,
      remediation: "use host, .suffix (apex and subdomains) or A.B.C.D[/N], each with an optional :port"
    })
  }
  if (options.egress?.mode === "off" && (options.egress.allow.length > 0 || options.egress.lockAllowlist)) {
    return yield* new InvalidInput({
      message: "--egress off has no allowlist: --egress-allow and --egress-lock-allowlist need mediation",
      remediation: "drop --egress off, or the allowlist flags"
    })
  }
  yield* checkSwaps(options)
  if (options.outputs !== undefined) yield* checkOutputs(options.outputs)
  yield* checkSupervision(options)
  const addressing = yield* addressingOf(options.addressing, {
    network: options.network ?? "user",
    egress: options.egress?.mode ?? "broker"
  })
  const files = yield* resolveFileCopies(options.files)
  return { name, resources, files, addressing }
})

export const create = Effect.fn("create")(function*(options: CreateOptions) {
  const { addressing, files, name, resources } = yield* checkCreate(options)
  const home = yield* Home
  const images = yield* ImageStore
  const hypervisor = yield* Hypervisor

  const model = options.model === undefined ? undefined : yield* resolvePairing(options.model)
  const image = yield* images.ensure(options.image, {
    ...(resources.sizeMiB === undefined ? {} : { sizeMiB: resources.sizeMiB }),
    ...(options.refuseDevices === true ? { refuseDevices: true } : {})
  })
  const workspaceDir = home.workspaceDir(name)
  const self = (yield* Processes).self
  // The disk is prepared in a staging directory and renamed into place once the name is ours.
  const staging = yield* home.ensureDir(
    NodePath.join(home.workspaces, stagingName(self, randomBytes(6).toString("hex")))
  )
  return yield* Effect.gen(function*() {
    // A large image's disk is shared with the image (a reflink, else an overlay over its baseline),
    // unless it is resized; anything else is the store's copy.
    const rootfs = NodePath.join(staging, "rootfs")
    const baseline = image.baselinePath
    const shared = baseline !== undefined && NodeFs.existsSync(baseline)
        && (resources.sizeMiB === undefined || resources.sizeMiB * MiB === NodeFs.statSync(baseline).size)
      ? yield* shareLargeDisk(baseline, rootfs)
      : undefined
    if (shared === undefined) yield* images.cloneRootfs(image, rootfs, resources.sizeMiB)
    const now = yield* DateTime.now
    const workspace = new Workspace({
      name: name as WorkspaceName,
      state: "prepared",
      backend: hypervisor.backend,
      ...(options.profile === undefined ? {} : { profile: options.profile }),
      resources,
      image: new ImageInfo({ ...image.config, ref: image.ref, digest: image.digest }),
      env: { ...(model === undefined ? {} : modelEnv), ...brokerEnv(options.brokers ?? []), ...options.env },
      hostname: options.hostname ?? hostnameFor(name),
      network: options.network ?? "user",
      restart: options.restart ?? "never",
      ports: options.ports ?? [],
      networks: options.networks ?? [],
      ...(options.egress === undefined ? {} : { egress: new EgressPolicy(options.egress) }),
      ...(model === undefined ? {} : { model }),
      brokers: options.brokers ?? [],
      ...(addressing === undefined ? {} : { addressing }),
      mounts: options.mounts ?? [],
      secrets: options.secrets ?? [],
      outputs: options.outputs ?? [],
      ...(options.entrypoint === undefined ? {} : { entrypoint: options.entrypoint }),
      files,
      setup: options.setup ?? [],
      ...(options.service === undefined ? {} : { service: options.service }),
      ...(options.shell === undefined ? {} : { shell: options.shell }),
      ...(options.health === undefined ? {} : { health: options.health }),
      ...(options.ttlSeconds === undefined || options.ttlSeconds === 0
        ? {}
        : { expiresAt: DateTime.addDuration(now, Duration.seconds(options.ttlSeconds)) }),
      ephemeral: options.ephemeral ?? false,
      // A one-shot workspace is this process's to delete; if the process dies first, gc does.
      ...(options.ephemeral === true
        ? { heldBy: { pid: self.pid, startTime: self.startTime ?? "" } }
        : {}),
      rootfsPath: NodePath.join(workspaceDir, "rootfs"),
      runtimeDir: home.runtimeDir(name),
      createdAt: now,
      diskFromImage: true,
      updatedAt: now
    })
    yield* publishWorkspace(workspace, staging, workspaceDir)
    return workspace
  }).pipe(Effect.ensuring(removeTree(staging)))
})

/**
 * A new workspace's last steps, once its disk is ready in `staging`: the record, its manifest beside
 * the disk (so the directory is never without one), its addresses on its named networks, and the
 * directory renamed into place. A failure after the record removes it again.
 */
export const publishWorkspace = (workspace: Workspace, staging: string, workspaceDir: string) =>
  Effect.gen(function*() {
    const store = yield* StateStore
    const name = workspace.name
    yield* store.create(workspace)
    yield* store.writeManifest(staging, workspace)
    yield* faultPoint("create.recorded")
    yield* joinNetworks(name, workspace.networks).pipe(Effect.tapError(() => store.remove(name)))
    yield* Effect.try({
      try: () => NodeFs.renameSync(staging, workspaceDir),
      catch: (cause) =>
        new Permanent({
          message: `cannot move the workspace disk into ${workspaceDir}: ${String(cause)}`,
          remediation: "remove the stale directory, or run `microagent gc`"
        })
    }).pipe(Effect.tapError(() => store.remove(name)))
  })

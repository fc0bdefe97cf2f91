/**
 * The `qemu` backend: QEMU `-M microvm` (q35 as an option), KVM when a probe shows it runs a stock
 * kernel and TCG otherwise, PVH boot of the cached vmlinux with the agent's initramfs, virtio-blk
 * disks, the guest channel over virtio-serial, the console in a file and QMP for control.
 *
 * VMMs are started with `-daemonize` (own session, reparented away from us) so they outlive the
 * process that launched them; the handle (pid, pid start time, socket paths) is all a later process
 * needs to re-attach.
 */
import { Data, Duration, Effect, Layer, Schedule } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import {
  Conflict,
  InvalidInput,
  NotFound,
  Permanent,
  Transient,
  Unsupported
} from "../../../domain/Errors.ts"
import { GuestChannel } from "../../../services/GuestChannel.ts"
import { Home } from "../../../services/Home.ts"
import {
  type Capability,
  Hypervisor,
  type HypervisorShape,
  type LaunchConfig,
  type LaunchOptions,
  type RestoreOptions,
  rootDiskOf,
  VmHandle
} from "../../../services/Hypervisor.ts"
import { faultPoint } from "../../process/FaultPoint.ts"
import { isAlive, startTimeOf } from "../../process/Processes.ts"
import {
  type AccelVerdict,
  hostBootId,
  hostTscKhz,
  kvmDisqualifier,
  probeKvmBoot,
  readHostFacts
} from "./internal/accel.ts"
import {
  type BootProfile,
  bootProfiles,
  cmdlineProblem,
  type GuestMemory,
  type Machine,
  nicProblem,
  qemuArgs,
  type RuntimePaths,
  runtimePaths,
  tcgCpu
} from "./internal/args.ts"
import {
  awaitMigration,
  controlSocket,
  destroy,
  type GuestControl,
  ignoreSharedMemory,
  makeControl,
  qmp,
  removeFiles
} from "./internal/Control.ts"
import { guestMemoryFor, memfd, ownCopyOf, seedConsole } from "./internal/Memory.ts"
import { qmpExecute } from "./internal/Qmp.ts"

export interface QemuOptions {
  readonly machine?: Machine
  /** `auto` probes KVM once per host boot and falls back to TCG. */
  readonly accel?: "auto" | "kvm" | "tcg"
  readonly binary?: string
  /** Bound of the KVM probe boot. */
  readonly kvmProbeTimeoutMs?: number
  /** Kernel options and module set; default `$MICROAGENT_BOOT_PROFILE`, else `fast` (see args.ts). */
  readonly bootProfile?: BootProfile
}

/** The boot profile from the options, else from `MICROAGENT_BOOT_PROFILE`; an unknown name is an error. */
export const resolveBootProfile = (
  fromOptions: BootProfile | undefined,
  fromEnv: string | undefined = process.env.MICROAGENT_BOOT_PROFILE
): BootProfile | InvalidInput => {
  if (fromOptions !== undefined) return fromOptions
  if (fromEnv === undefined || fromEnv === "") return "fast"
  return (bootProfiles as ReadonlyArray<string>).includes(fromEnv)
    ? fromEnv as BootProfile
    : new InvalidInput({
      message: `MICROAGENT_BOOT_PROFILE=${fromEnv} is not a boot profile`,
      remediation: `use one of: ${bootProfiles.join(", ")} (or leave it unset for fast)`
    })
}

/** The guest channel as readiness probe and shutdown path. */
export const guestChannelControl = Effect.map(GuestChannel, (channel): GuestControl => ({
  ready: (endpoint) =>
    Effect.scoped(Effect.flatMap(channel.connect(endpoint), (connection) => connection.ping)),
  shutdown: (endpoint) =>
    Effect.scoped(Effect.flatMap(channel.connect(endpoint), (connection) => connection.shutdown))
}))

export type { GuestControl } from "./internal/Control.ts"

export const qemuCapabilities: ReadonlySet<Capability> = new Set<Capability>([
  "StructuredExec",
  "Console",
  "PauseResume",
  "LiveFileCopy",
  "OfflineFileCopy",
  "NetworkPublish",
  "NamedNetworks",
  "Volumes",
  "DiskImages",
  "Secrets",
  "Snapshot",
  "OverlayDisk"
])

class BootFailure extends Data.TaggedError("BootFailure")<{
  readonly reason: "Timeout" | "Exited" | "Stalled"
}> {}

/** A first cold boot that stalled or timed out: `launch` boots once more before it reports `error`. */
class StalledBoot extends Data.TaggedError("StalledBoot")<{ readonly error: Transient }> {}

/** Where no second boot follows, a stalled boot is its error. */
const asBootError = <A, E, R>(self: Effect.Effect<A, E, R>) =>
  Effect.catchAll(
    self,
    (error): Effect.Effect<never, Transient | Exclude<E, StalledBoot>> =>
      Effect.fail(error instanceof StalledBoot ? error.error : error as Exclude<E, StalledBoot>)
  )

/**
 * The kernel's own report of a stalled boot on its console (a soft lockup, an RCU stall), as seen in
 * rare TCG boots that never reach the agent: such a boot is killed at once rather than waited out.
 */
export const stallSign = (console: string): string | undefined =>
  /BUG: soft lockup - CPU#\d+ stuck for \d+s!|rcu: INFO: \w+ (?:self-)?detected stalls? on CPUs?|rcu_\w+ self-detected stall/
    .exec(console)?.[0]

const consoleTail = (path: string, lines = 12): string => {
  try {
    const text = NodeFs.readFileSync(path, "utf8")
    const tail = text.trimEnd().split("\n").slice(-lines).join("\n")
    return tail.length === 0 ? "(console empty)" : tail
  } catch {
    return "(no console log)"
  }
}

/**
 * Where each vCPU is when a boot times out (`vCPU0 RIP=… vCPU1 RIP=…; `), read over QMP before the VM
 * is killed: with `quiet` the console stops at the last error-level message, so the instruction
 * pointers (stable under `nokaslr`, mapped with the kernel's System.map) tell a hang from a slow boot.
 * Empty when QEMU does not answer.
 */
const vcpuWhereabouts = (qmpSocket: string) =>
  qmpExecute(qmpSocket, "human-monitor-command", { "command-line": "info registers -a" }, Duration.seconds(2))
    .pipe(
      Effect.map((out) => {
        const rips = typeof out === "string" ? [...out.matchAll(/RIP=([0-9a-f]+)/g)].map((m) => m[1]) : []
        return rips.length === 0 ? "" : `${rips.map((rip, i) => `vCPU${i} RIP=${rip}`).join(" ")}; `
      }),
      Effect.orElseSucceed(() => "")
    )

const unsupported = (feature: string, remediation = "") =>
  new Unsupported({
    message: `the qemu backend does not support ${feature}`,
    remediation,
    backend: "qemu",
    feature
  })

/** Starts QEMU, which daemonizes once its sockets listen; resolves to the daemon's pid. */
/** iproute2's ip, which runs the VMM inside a mediated workspace's network namespace. */
const ipCommand = () =>
  ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].find((path) => NodeFs.existsSync(path)) ?? "ip"

const startVmm = (binary: string, args: ReadonlyArray<string>, paths: RuntimePaths) =>
  Effect.async<number, Permanent>((resume) => {
    // Sockets and the console log are created by QEMU: make them private from the start.
    const umask = process.umask(0o077)
    let child: NodeChild.ChildProcess
    try {
      child = NodeChild.spawn(binary, [...args], { detached: true, stdio: ["ignore", "ignore", "pipe"] })
    } finally {
      process.umask(umask)
    }
    const stderr: Array<Buffer> = []
    let settled = false
    const settle = (result: Effect.Effect<number, Permanent>) => {
      if (settled) return
      settled = true
      resume(result)
    }
    child.stderr?.on("data", (chunk: Buffer) => stderr.push(chunk))
    child.on("error", (error: NodeJS.ErrnoException) =>
      settle(Effect.fail(
        error.code === "ENOENT"
          ? new Permanent({
            message: `${binary} is not installed`,
            remediation: "install QEMU: apt-get install qemu-system-x86"
          })
          : new Permanent({ message: `cannot start ${binary}: ${error.message}` })
      )))
    child.on("close", (code) => {
      const message = Buffer.concat(stderr).toString("utf8").trim()
      if (code !== 0) {
        return settle(Effect.fail(
          new Permanent({
            message: `QEMU refused to start (exit ${code}): ${message}`,
            remediation: "check the kernel, initramfs and disk paths, and that no other VM uses the same disk"
          })
        ))
      }
      const pid = readPid(paths.pidFile)
      settle(
        pid === undefined
          ? Effect.fail(new Permanent({ message: `QEMU wrote no usable pid to ${paths.pidFile}` }))
          : Effect.succeed(pid)
      )
    })
  }).pipe(Effect.uninterruptible)

export const make = (options: QemuOptions, control: GuestControl) =>
  Effect.gen(function*() {
    const home = yield* Home
    const machine = options.machine ?? "microvm"
    const binary = options.binary ?? "qemu-system-x86_64"
    const hostFile = NodePath.join(home.root, "qemu-host.json")
    // Runs dmesg at most once per layer.
    let tscMemo: { readonly khz: number | undefined } | undefined
    const tscKhz = () => (tscMemo ??= { khz: hostTscKhz() }).khz

    /** The accelerator verdict and TSC frequency, cached per host boot in the state directory. */
    const hostVerdict = (kernelPath: string) =>
      Effect.gen(function*() {
        const bootId = hostBootId()
        if (options.accel === "tcg") return { kvm: false, reason: "TCG requested", tscKhz: tscKhz() }
        if (options.accel === "kvm") return { kvm: true, reason: "KVM requested", tscKhz: tscKhz() }
        const cached = yield* Effect.sync(() => {
          try {
            const parsed = JSON.parse(NodeFs.readFileSync(hostFile, "utf8")) as {
              bootId?: string
              binary?: string
              kvm?: boolean
              reason?: string
              tscKhz?: number
            }
            return parsed.bootId === bootId && parsed.binary === binary && typeof parsed.kvm === "boolean"
              ? { kvm: parsed.kvm, reason: parsed.reason ?? "", tscKhz: parsed.tscKhz }
              : undefined
          } catch {
            return undefined
          }
        })
        if (cached !== undefined) return cached
        const disqualified = kvmDisqualifier(readHostFacts())
        const verdict: AccelVerdict = disqualified !== undefined
          ? { kvm: false, reason: disqualified }
          : yield* probeKvmBoot(binary, kernelPath, home.tmp, options.kvmProbeTimeoutMs ?? 10_000)
        const result = { ...verdict, tscKhz: tscKhz() }
        yield* Effect.sync(() => {
          const temp = `${hostFile}.${process.pid}.tmp`
          NodeFs.writeFileSync(temp, JSON.stringify({ bootId, binary, ...result }) + "\n", { mode: 0o600 })
          NodeFs.renameSync(temp, hostFile)
        }).pipe(Effect.ignore)
        return result
      })

    const validate = (config: LaunchConfig) =>
      Effect.gen(function*() {
        if (process.arch !== "x64") {
          return yield* unsupported(
            `${process.arch} hosts`,
            "the qemu backend drives qemu-system-x86_64 only"
          )
        }
        if (config.kernelPath === undefined || config.initrdPath === undefined) {
          return yield* new InvalidInput({
            message: "the qemu backend needs kernelPath and initrdPath",
            remediation: "get them from KernelCache.ensure"
          })
        }
        const problems = [
          cmdlineProblem("the hostname", config.hostname),
          ...config.disks.filter((d) => d.kind !== "stand-in").map((d) =>
            cmdlineProblem(`the mountpoint of disk ${d.name}`, d.mountpoint)
          ),
          ...config.nics.map(nicProblem)
        ].filter((p) => p !== undefined)
        if (problems.length > 0) return yield* new InvalidInput({ message: problems.join("; ") })
        const bootProfile = resolveBootProfile(options.bootProfile)
        if (typeof bootProfile !== "string") return yield* bootProfile
        if (config.network !== "user" && config.ports.length > 0) {
          return yield* unsupported(
            "published ports without user networking",
            "use --network user to publish ports"
          )
        }
        for (
          const file of [
            config.kernelPath,
            config.initrdPath,
            rootDiskOf(config.rootfsPath).path,
            ...config.disks.map((d) => d.path)
          ]
        ) {
          if (!NodeFs.existsSync(file)) return yield* new NotFound({ message: `${file} does not exist` })
        }
        return { kernelPath: config.kernelPath, initrdPath: config.initrdPath, bootProfile }
      })

    const awaitBoot = (handle: VmHandle, timeoutSeconds: number, watchConsole: boolean) => {
      const exited = Effect.suspend(() =>
        isAlive(handle.pid, handle.pidStartTime) ? Effect.fail("alive" as const) : Effect.void
      ).pipe(
        Effect.retry(Schedule.spaced(Duration.millis(50))),
        Effect.orDie,
        Effect.zipRight(Effect.fail(new BootFailure({ reason: "Exited" })))
      )
      const ready = control.ready(handle.channel).pipe(
        Effect.timeout(Duration.seconds(Math.max(1, timeoutSeconds))),
        Effect.retry(Schedule.spaced(Duration.millis(50))),
        // Retried until the deadline below: an attempt's failure is not the boot's.
        Effect.catchAll(() => Effect.never)
      )
      const stalled = Effect.suspend(() =>
        stallSign(consoleTail(handle.consoleLog, 40)) === undefined
          ? Effect.fail("booting" as const)
          : Effect.void
      ).pipe(
        Effect.retry(Schedule.spaced(Duration.seconds(1))),
        Effect.orDie,
        Effect.zipRight(Effect.fail(new BootFailure({ reason: "Stalled" })))
      )
      // Every side is interruptible even when the caller's region is not (a start inside an
      // acquireRelease's acquire): the race ends its losers by interruption, and an uninterruptible
      // loser would be waited for until the VM exits. The first to end, failed or not, decides.
      const ended = watchConsole
        ? Effect.raceFirst(Effect.interruptible(exited), Effect.interruptible(stalled))
        : Effect.interruptible(exited)
      return Effect.raceFirst(Effect.interruptible(ready), ended).pipe(
        Effect.timeoutFail({
          duration: Duration.millis(Math.round(timeoutSeconds * 1000)),
          onTimeout: () => new BootFailure({ reason: "Timeout" })
        })
      )
    }

    /** The path goes through QEMU's `exec:` (sh -c): only plain paths are accepted. */
    const plainPath = (file: string, action: string) =>
      /^[A-Za-z0-9_./+-]+$/.test(file)
        ? Effect.void
        : Effect.fail(new InvalidInput({ message: `cannot ${action} ${file}: unusual characters in path` }))

    /**
     * Loads a saved state into a VMM started with `-incoming defer`, then lets it run. QEMU 7.2 has no
     * `file:` URI: the stream is read through `exec:cat`.
     */
    const loadState = (handle: VmHandle, stateFile: string, memory: GuestMemory | undefined) =>
      Effect.gen(function*() {
        // A stream saved beside its memory file says so in its RAM section, which must be read alike.
        yield* ignoreSharedMemory(handle, memory?._tag === "MappedFile" || memory?._tag === "SharedFile")
        yield* qmpExecute(controlSocket(handle), "migrate-incoming", { uri: `exec:cat ${stateFile}` }).pipe(
          Effect.mapError((error) =>
            new Transient({ message: `QMP migrate-incoming on pid ${handle.pid} failed: ${error.message}` })
          )
        )
        yield* awaitMigration(handle, Date.now() + 300_000, "loading")
        yield* qmp(handle, "cont")
      })

    /**
     * Boots a VMM, or with `stateFile` restores one from a saved state; then waits for its agent. A
     * `firstBoot` that stalls or times out fails with `StalledBoot`, for `launch` to boot again.
     */
    const start = (
      config: LaunchConfig,
      stateFile: string | undefined,
      ownMemory = false,
      firstBoot = false
    ) =>
      Effect.gen(function*() {
        const { bootProfile, initrdPath, kernelPath } = yield* validate(config)
        if (stateFile !== undefined) {
          yield* plainPath(stateFile, "restore the VM state from")
          if (!NodeFs.existsSync(stateFile)) {
            return yield* new NotFound({ message: `VM state ${stateFile} does not exist` })
          }
        }
        const saved = stateFile === undefined ? memfd : guestMemoryFor(stateFile)
        const memory = ownMemory && saved?._tag === "MappedFile" ? yield* ownCopyOf(saved.path) : saved
        const paths = runtimePaths(config.runtimeDir)
        yield* Effect.try({
          try: () => {
            NodeFs.mkdirSync(config.runtimeDir, { recursive: true, mode: 0o700 })
            NodeFs.chmodSync(config.runtimeDir, 0o700)
          },
          catch: (cause) => new Permanent({ message: `cannot create ${config.runtimeDir}: ${String(cause)}` })
        })
        const previous = readPid(paths.pidFile)
        if (previous !== undefined && isAlive(previous, undefined) && isQemu(previous)) {
          return yield* new Conflict({
            message: `a VMM (pid ${previous}) already runs in ${config.runtimeDir}`,
            remediation: "halt or kill the workspace first"
          })
        }
        yield* removeFiles(paths, { console: true })
        if (stateFile !== undefined) yield* seedConsole(stateFile, paths.consoleLog)
        const host = yield* hostVerdict(kernelPath)
        const rootDisk = rootDiskOf(config.rootfsPath)
        const args = qemuArgs({
          workspace: config.workspace,
          machine,
          accel: host.kvm ? "kvm" : "tcg",
          tscKhz: host.tscKhz,
          kernelPath,
          initrdPath,
          rootfsPath: rootDisk.path,
          rootfsFormat: rootDisk.format,
          memoryMiB: config.memoryMiB,
          cpus: config.cpus,
          hostname: config.hostname,
          network: config.network,
          addressing: config.addressing,
          ports: config.ports,
          disks: config.disks,
          nics: config.nics,
          egressTap: config.egress?.tap,
          paths,
          bootProfile,
          kernelHz: config.kernelHz,
          incoming: stateFile !== undefined,
          modelChannel: config.modelChannel,
          brokerPorts: config.brokerPorts,
          channelsUnannounced: config.channelsUnannounced,
          unpluggedNic: config.unpluggedNic,
          memory
        })
        const handleOf = (pid: number) =>
          new VmHandle({
            backend: "qemu",
            pid,
            pidStartTime: startTimeOf(pid),
            channel: { _tag: "UnixSocket", path: paths.agentSocket },
            consoleLog: paths.consoleLog,
            controlSocket: paths.qmpSocket
          })
        const bootFailed = (failure: BootFailure, vcpus: string) => {
          const tail = consoleTail(paths.consoleLog)
          const stalled = (what: string) =>
            new Transient({
              message: `${config.workspace}: ${what}; ${vcpus}console tail:\n${tail}`,
              remediation:
                "retry; if it keeps failing, check the kernel, the root filesystem and the console log"
            })
          return failure.reason === "Stalled"
            ? stalled(`the guest kernel stalled while booting (${stallSign(tail) ?? "a stall"})`)
            : failure.reason === "Timeout"
            ? stalled(`the guest agent did not answer within ${config.bootTimeoutSeconds} s`)
            : new Permanent({
              message: `${config.workspace}: the VM stopped while booting; console tail:\n${tail}`,
              remediation:
                "check that the root filesystem is an ext4 image and the kernel matches the initramfs"
            })
        }
        // From the moment the VMM exists until it answers, any failure or interruption (Ctrl-C) kills
        // it and removes its files: a failed launch leaves nothing behind.
        const handle = yield* Effect.uninterruptibleMask((restore) =>
          Effect.flatMap(
            (config.egress === undefined
              ? startVmm(binary, args, paths)
              // The VMM opens the mediated tap inside the workspace's namespace.
              : startVmm(ipCommand(), ["netns", "exec", config.egress.netns, binary, ...args], paths)).pipe(
                Effect.tapError(() => removeFiles(paths, { console: true })),
                // The VMM has mapped its memory copy: the name goes, the memory stays with the VMM.
                Effect.ensuring(
                  memory?._tag === "SharedFile"
                    ? Effect.sync(() => NodeFs.rmSync(memory.path, { force: true }))
                    : Effect.void
                )
              ),
            (pid) => {
              const handle = handleOf(pid)
              return restore(
                Effect.sync(() => {
                  for (const file of [paths.qmpSocket, paths.agentSocket, paths.consoleLog, paths.pidFile]) {
                    try {
                      NodeFs.chmodSync(file, 0o600)
                    } catch {
                      // Not there (yet): the directory is 0700 anyway.
                    }
                  }
                }).pipe(
                  Effect.zipRight(faultPoint("vmm.booting")),
                  Effect.zipRight(
                    stateFile === undefined ? Effect.void : loadState(handle, stateFile, memory).pipe(
                      // QEMU exits when a stream does not load: its stderr went with the daemon, so
                      // say what is known.
                      Effect.mapError((error) =>
                        isAlive(handle.pid, handle.pidStartTime) ? error : new Permanent({
                          message:
                            `${config.workspace}: QEMU could not load the VM state ${stateFile} (the VMM exited): ${error.message}`,
                          remediation:
                            "the state must come from this QEMU version with the same machine, memory, vCPUs and devices"
                        })
                      )
                    )
                  ),
                  Effect.zipRight(awaitBoot(handle, config.bootTimeoutSeconds, stateFile === undefined)),
                  Effect.catchTag("BootFailure", (failure) =>
                    Effect.flatMap(
                      failure.reason === "Exited" ? Effect.succeed("") : vcpuWhereabouts(paths.qmpSocket),
                      (vcpus): Effect.Effect<never, Transient | Permanent | StalledBoot> => {
                        const error = bootFailed(failure, vcpus)
                        return firstBoot && error._tag === "Transient"
                          ? Effect.fail(new StalledBoot({ error }))
                          : Effect.fail(error)
                      }
                    ))
                )
              ).pipe(
                Effect.onError(() => destroy(handle, true)),
                Effect.as(handle)
              )
            }
          )
        )
        return handle
      })

    /**
     * A cold boot. One that stalls (the kernel reports a lockup on its console) or whose agent does
     * not answer in time is killed and booted once more on the same disk (unless `bootAttempts` is 1):
     * rare TCG boots hang in the kernel whatever the workspace, and the next boot does not. The second
     * failure is the error.
     */
    const launch = Effect.fn("Hypervisor.launch")(function*(config: LaunchConfig, options?: LaunchOptions) {
      return yield* start(config, undefined, false, (config.bootAttempts ?? 2) > 1).pipe(
        Effect.catchTag("StalledBoot", ({ error: first }) =>
          Effect.logWarning(`${first.message.split("\n")[0]}: booting it once more`).pipe(
            Effect.zipRight(options?.beforeSecondBoot ?? Effect.succeed(config)),
            Effect.flatMap((again) =>
              start(again, undefined).pipe(asBootError)
            ),
            Effect.mapError((error) =>
              error._tag === "Transient"
                ? new Transient({ ...error, message: `booted twice, in vain: ${error.message}` })
                : error
            )
          ))
      )
    })

    const restore = Effect.fn("Hypervisor.restore")(
      function*(config: LaunchConfig, stateFile: string, options?: RestoreOptions) {
        return yield* start(config, stateFile, options?.ownMemory === true).pipe(asBootError)
      }
    )

    const { attach, halt, inspect, kill, pause, resume, saveState, sever } = makeControl(control)

    return Hypervisor.of(
      {
        backend: "qemu",
        capabilities: qemuCapabilities,
        guestVariant: () => {
          const profile = resolveBootProfile(options.bootProfile)
          return typeof profile === "string"
            ? `${profile}:${tcgCpu(profile).join(" ") || "qemu64"}`
            : undefined
        },
        launch,
        attach,
        inspect,
        halt,
        kill,
        pause,
        resume,
        saveState,
        restore,
        sever
      } satisfies HypervisorShape
    )
  })

const readPid = (file: string): number | undefined => {
  try {
    const pid = Number(NodeFs.readFileSync(file, "utf8").trim())
    return Number.isInteger(pid) && pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}

const isQemu = (pid: number): boolean => {
  try {
    return NodeFs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("qemu")
  } catch {
    return false
  }
}

export const QemuHypervisor = {
  /** The backend with the guest channel as readiness probe and shutdown path. Needs Home and GuestChannel. */
  layer: (options: QemuOptions = {}) =>
    Layer.effect(Hypervisor, Effect.flatMap(guestChannelControl, (control) => make(options, control))),
  /** The backend with another readiness/shutdown path (tests of the VMM plumbing). Needs Home. */
  layerWithGuestControl: (control: GuestControl, options: QemuOptions = {}) =>
    Layer.effect(Hypervisor, make(options, control))
} as const

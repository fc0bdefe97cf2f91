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
import { randomBytes } from "node:crypto"
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
  type ChannelEndpoint,
  consoleFileOf,
  Hypervisor,
  type HypervisorShape,
  type LaunchConfig,
  memoryFileOf,
  type RestoreOptions,
  VmHandle,
  type VmStatus
} from "../../../services/Hypervisor.ts"
import { faultPoint } from "../../process/FaultPoint.ts"
import { isAlive, startTimeOf, waitGone } from "../../process/Processes.ts"
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
  runtimePaths
} from "./internal/args.ts"
import { qmpExecute, qmpStatus } from "./internal/Qmp.ts"

export interface QemuOptions {
  readonly machine?: Machine
  /** `auto` probes KVM once per host boot and falls back to TCG. */
  readonly accel?: "auto" | "kvm" | "tcg"
  readonly binary?: string
  /** Bound of the KVM probe boot. */
  readonly kvmProbeTimeoutMs?: number
  /** Kernel options and module set; default `$MICROAGENT_BOOT_PROFILE`, else `compat` (see args.ts). */
  readonly bootProfile?: BootProfile
}

/** The boot profile from the options, else from `MICROAGENT_BOOT_PROFILE`; an unknown name is an error. */
export const resolveBootProfile = (
  fromOptions: BootProfile | undefined,
  fromEnv: string | undefined = process.env.MICROAGENT_BOOT_PROFILE
): BootProfile | InvalidInput => {
  if (fromOptions !== undefined) return fromOptions
  // `fast` is opt-in until it has a clean record: one boot of it stalled in early PCI set-up in CI.
  if (fromEnv === undefined || fromEnv === "") return "compat"
  return (bootProfiles as ReadonlyArray<string>).includes(fromEnv)
    ? fromEnv as BootProfile
    : new InvalidInput({
      message: `MICROAGENT_BOOT_PROFILE=${fromEnv} is not a boot profile`,
      remediation: `use one of: ${bootProfiles.join(", ")} (or leave it unset for compat)`
    })
}

/**
 * How the backend knows the guest is up and asks it to stop. The real one uses the guest channel
 * (the agent's answer to HELLO is the readiness signal); tests of the VMM plumbing alone can plug in
 * another (see `QemuHypervisor.layerWithGuestControl`).
 */
export interface GuestControl {
  /** One attempt to reach the agent; retried by the backend until the boot deadline. */
  readonly ready: (channel: ChannelEndpoint) => Effect.Effect<void, unknown>
  /** Asks the agent to power off; the backend then waits for the VMM to exit. */
  readonly shutdown: (channel: ChannelEndpoint) => Effect.Effect<void, unknown>
}

/** The guest channel as readiness probe and shutdown path. */
export const guestChannelControl = Effect.map(GuestChannel, (channel): GuestControl => ({
  ready: (endpoint) =>
    Effect.scoped(Effect.flatMap(channel.connect(endpoint), (connection) => connection.ping)),
  shutdown: (endpoint) =>
    Effect.scoped(Effect.flatMap(channel.connect(endpoint), (connection) => connection.shutdown))
}))

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
  "Snapshot"
])

class BootFailure extends Data.TaggedError("BootFailure")<{
  readonly reason: "Timeout" | "Exited"
}> {}

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

const removeFiles = (paths: RuntimePaths, options: { readonly console: boolean }) =>
  Effect.sync(() => {
    for (const file of [paths.qmpSocket, paths.agentSocket, paths.pidFile, paths.modelSocket]) {
      NodeFs.rmSync(file, { force: true })
    }
    if (options.console) NodeFs.rmSync(paths.consoleLog, { force: true })
  })

const pathsOf = (handle: VmHandle): RuntimePaths => runtimePaths(NodePath.dirname(handle.consoleLog))

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
          ...config.disks.map((d) => cmdlineProblem(`the mountpoint of disk ${d.name}`, d.mountpoint)),
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
            config.rootfsPath,
            ...config.disks.map((d) => d.path)
          ]
        ) {
          if (!NodeFs.existsSync(file)) return yield* new NotFound({ message: `${file} does not exist` })
        }
        return { kernelPath: config.kernelPath, initrdPath: config.initrdPath, bootProfile }
      })

    /** Ends a VMM at once and removes its sockets and pid file. */
    const destroy = (handle: VmHandle, removeConsole: boolean) =>
      Effect.gen(function*() {
        if (isAlive(handle.pid, handle.pidStartTime)) {
          yield* Effect.sync(() => {
            try {
              process.kill(handle.pid, "SIGKILL")
            } catch {
              // Gone in between.
            }
          })
          yield* waitGone(handle.pid, handle.pidStartTime, Duration.seconds(10))
        }
        yield* removeFiles(pathsOf(handle), { console: removeConsole })
      })

    const awaitBoot = (handle: VmHandle, timeoutSeconds: number) => {
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
      // Both sides are interruptible even when the caller's region is not (a start inside an
      // acquireRelease's acquire): the race ends its loser by interruption, and an uninterruptible
      // loser would be waited for until the VM exits.
      return Effect.raceFirst(Effect.interruptible(ready), Effect.interruptible(exited)).pipe(
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

    /** Boots a VMM, or with `stateFile` restores one from a saved state; then waits for its agent. */
    const start = (config: LaunchConfig, stateFile: string | undefined, ownMemory = false) =>
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
        const args = qemuArgs({
          workspace: config.workspace,
          machine,
          accel: host.kvm ? "kvm" : "tcg",
          tscKhz: host.tscKhz,
          kernelPath,
          initrdPath,
          rootfsPath: config.rootfsPath,
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
          return failure.reason === "Timeout"
            ? new Transient({
              message:
                `${config.workspace}: the guest agent did not answer within ${config.bootTimeoutSeconds} s; ${vcpus}console tail:\n${tail}`,
              remediation:
                "retry; if it keeps failing, check the kernel, the root filesystem and the console log"
            })
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
                  Effect.zipRight(awaitBoot(handle, config.bootTimeoutSeconds)),
                  Effect.catchTag("BootFailure", (failure) =>
                    Effect.flatMap(
                      failure.reason === "Timeout" ? vcpuWhereabouts(paths.qmpSocket) : Effect.succeed(""),
                      (vcpus) => Effect.fail(bootFailed(failure, vcpus))
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

    const launch = Effect.fn("Hypervisor.launch")(function*(config: LaunchConfig) {
      return yield* start(config, undefined)
    })

    const restore = Effect.fn("Hypervisor.restore")(
      function*(config: LaunchConfig, stateFile: string, options?: RestoreOptions) {
        return yield* start(config, stateFile, options?.ownMemory === true)
      }
    )

    const requireQemu = (handle: VmHandle) =>
      handle.backend === "qemu"
        ? Effect.void
        : Effect.fail(
          new InvalidInput({ message: `handle belongs to the ${handle.backend} backend, not qemu` })
        )

    const controlSocket = (handle: VmHandle) => handle.controlSocket ?? pathsOf(handle).qmpSocket

    const qmp = (handle: VmHandle, command: string) =>
      qmpExecute(controlSocket(handle), command).pipe(
        Effect.mapError((error) =>
          new Transient({
            message: `QMP ${command} on pid ${handle.pid} failed: ${error.message}`,
            remediation: "retry; if the VMM is wedged, kill the workspace"
          })
        )
      )

    const requireAlive = (handle: VmHandle, action: string) =>
      isAlive(handle.pid, handle.pidStartTime)
        ? Effect.void
        : Effect.fail(
          new Conflict({ message: `cannot ${action}: the VMM (pid ${handle.pid}) is not running` })
        )

    const attach = Effect.fn("Hypervisor.attach")(function*(handle: VmHandle) {
      yield* requireQemu(handle)
      if (!isAlive(handle.pid, handle.pidStartTime)) {
        return yield* new NotFound({
          message: `the VMM (pid ${handle.pid}) is gone`,
          remediation: "start the workspace again"
        })
      }
      yield* qmpStatus(controlSocket(handle)).pipe(
        Effect.mapError((error) =>
          new Transient({
            message: `pid ${handle.pid} is alive but its QMP socket does not answer: ${error.message}`
          })
        )
      )
      return handle
    })

    const inspect = Effect.fn("Hypervisor.inspect")(function*(handle: VmHandle) {
      yield* requireQemu(handle)
      if (!isAlive(handle.pid, handle.pidStartTime)) return "exited" as VmStatus
      const status = yield* qmpStatus(controlSocket(handle)).pipe(
        // It may have exited between the check and the query, or be exiting: a VMM that powers off
        // closes its QMP socket a moment before the process ends.
        Effect.catchAll((error) =>
          Effect.flatMap(
            waitGone(handle.pid, handle.pidStartTime, Duration.seconds(2)),
            (gone) =>
              gone
                ? Effect.succeed("shutdown")
                : Effect.fail(new Transient({ message: `QMP query-status failed: ${error.message}` }))
          )
        )
      )
      switch (status) {
        case "running":
          return "running" as VmStatus
        case "shutdown":
        case "internal-error":
        case "guest-panicked":
          return "exited" as VmStatus
        default:
          return "paused" as VmStatus
      }
    })

    const halt = Effect.fn("Hypervisor.halt")(function*(handle: VmHandle, timeoutSeconds: number) {
      yield* requireQemu(handle)
      const paths = pathsOf(handle)
      if (isAlive(handle.pid, handle.pidStartTime)) {
        const budget = Duration.millis(Math.round(timeoutSeconds * 1000))
        // A paused guest cannot hear the request: let it run first.
        yield* qmpStatus(controlSocket(handle)).pipe(
          Effect.flatMap((status) =>
            status === "paused" ? qmpExecute(controlSocket(handle), "cont") : Effect.void
          ),
          Effect.ignore
        )
        // The agent powers off on SHUTDOWN; system_powerdown is a fallback for guests that listen to ACPI.
        yield* control.shutdown(handle.channel).pipe(
          Effect.timeout(Duration.min(budget, Duration.seconds(5))),
          Effect.catchAllCause(() =>
            qmpExecute(controlSocket(handle), "system_powerdown").pipe(Effect.ignore)
          )
        )
        const gone = yield* waitGone(handle.pid, handle.pidStartTime, budget)
        if (!gone) {
          return yield* new Transient({
            message: `the VM (pid ${handle.pid}) did not power off within ${timeoutSeconds} s`,
            remediation: "kill it, or halt again with a longer timeout"
          })
        }
      }
      yield* removeFiles(paths, { console: false })
    })

    const kill = Effect.fn("Hypervisor.kill")(function*(handle: VmHandle) {
      yield* requireQemu(handle)
      yield* destroy(handle, false)
    })

    const pause = Effect.fn("Hypervisor.pause")(function*(handle: VmHandle) {
      yield* requireQemu(handle)
      yield* requireAlive(handle, "pause")
      yield* qmp(handle, "stop")
    })

    const resume = Effect.fn("Hypervisor.resume")(function*(handle: VmHandle) {
      yield* requireQemu(handle)
      yield* requireAlive(handle, "resume")
      yield* qmp(handle, "cont")
    })

    /** Polls `query-migrate` until the stream is complete; QEMU leaves the VM paused (postmigrate). */
    const awaitMigration = (
      handle: VmHandle,
      deadline: number,
      verb: "saving" | "loading",
      started = Date.now()
    ): Effect.Effect<void, Permanent | Transient> =>
      qmpExecute(controlSocket(handle), "query-migrate").pipe(
        Effect.mapError((error) => new Transient({ message: `QMP query-migrate failed: ${error.message}` })),
        Effect.flatMap((info) => {
          const { status, "error-desc": errorDesc } = (info ?? {}) as {
            status?: string
            "error-desc"?: string
          }
          if (status === "completed") return Effect.void
          if (status === "failed" || status === "cancelled") {
            return Effect.fail(
              new Permanent({
                message: `${verb} the VM state of pid ${handle.pid} ${status}: ${errorDesc ?? "no detail"}`
              })
            )
          }
          if (Date.now() > deadline) {
            return qmpExecute(controlSocket(handle), "migrate_cancel").pipe(
              Effect.ignore,
              Effect.zipRight(Effect.fail(
                new Transient({
                  message: `${verb} the VM state of pid ${handle.pid} did not finish (status ${status})`,
                  remediation: "retry when the host is less loaded"
                })
              ))
            )
          }
          // A device-state stream takes milliseconds: poll closely at first, then every 50 ms.
          return Effect.sleep(Duration.millis(Date.now() - started < 250 ? 5 : 50)).pipe(
            Effect.zipRight(Effect.suspend(() => awaitMigration(handle, deadline, verb, started)))
          )
        })
      )

    /** Sets QMP's `x-ignore-shared`: with it a migration stream leaves out shared RAM (the memfd). */
    const ignoreSharedMemory = (handle: VmHandle, on: boolean) =>
      qmpExecute(controlSocket(handle), "migrate-set-capabilities", {
        capabilities: [{ capability: "x-ignore-shared", state: on }]
      }).pipe(
        Effect.mapError((error) =>
          new Transient({
            message: `QMP migrate-set-capabilities on pid ${handle.pid} failed: ${error.message}`
          })
        )
      )

    const saveState = Effect.fn("Hypervisor.saveState")(function*(handle: VmHandle, file: string) {
      yield* requireQemu(handle)
      yield* requireAlive(handle, "save the VM state")
      // The path goes through QEMU's `exec:` (sh -c): only plain paths are accepted.
      if (!/^[A-Za-z0-9_./+-]+$/.test(file)) {
        return yield* new InvalidInput({
          message: `cannot save VM state to ${file}: unusual characters in path`
        })
      }
      // A booted VM's RAM is a shared memfd: copied out as a file, and left out of the stream. A
      // restored VM maps its memory privately, so its RAM goes into the stream.
      const memfd = sharedMemoryOf(handle.pid)
      yield* ignoreSharedMemory(handle, memfd !== undefined)
      // The file is created by QEMU's shell: make it private first.
      yield* Effect.sync(() => NodeFs.writeFileSync(file, "", { mode: 0o600 }))
      yield* qmpExecute(controlSocket(handle), "migrate", { uri: `exec:cat > ${file}` }).pipe(
        Effect.mapError((error) =>
          new Transient({ message: `QMP migrate on pid ${handle.pid} failed: ${error.message}` })
        )
      )
      yield* awaitMigration(handle, Date.now() + 300_000, "saving")
      if (memfd !== undefined) yield* copyMemory(memfd, memoryFileOf(file))
      // What the guest printed so far, for the restored VM's log (best effort).
      yield* Effect.sync(() => {
        try {
          NodeFs.copyFileSync(pathsOf(handle).consoleLog, consoleFileOf(file))
          NodeFs.chmodSync(consoleFileOf(file), 0o600)
        } catch {
          // No console log: the restored VM's starts empty.
        }
      })
    })

    /** `set_link … up=false` on each netdev the launch arguments name: `net0`, then `nic1`, `nic2`, … */
    const sever = Effect.fn("Hypervisor.sever")(function*(handle: VmHandle) {
      yield* requireQemu(handle)
      yield* requireAlive(handle, "cut the network of")
      const down = (name: string) =>
        qmpExecute(controlSocket(handle), "set_link", { name, up: false }).pipe(
          Effect.as(true),
          // A netdev the VM does not have is a command error; anything else is a real failure.
          Effect.catchIf((error) => error.reason === "Command", () => Effect.succeed(false)),
          Effect.mapError((error) =>
            new Transient({ message: `QMP set_link ${name} on pid ${handle.pid} failed: ${error.message}` })
          )
        )
      yield* down("net0")
      for (let i = 1; i <= 64; i++) {
        if (!(yield* down(`nic${i}`))) break
      }
    })

    return Hypervisor.of(
      {
        backend: "qemu",
        capabilities: qemuCapabilities,
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

const memfd: GuestMemory = { _tag: "Memfd" }

/**
 * How a saved state's RAM is restored: its memory file mapped copy-on-write; else from the stream into
 * private memory; a stream from before the memory backend had a name (its RAM block is the machine's own,
 * `microvm.ram` or `pc.ram`) into QEMU's default RAM, as it was saved.
 */
const guestMemoryFor = (stateFile: string): GuestMemory | undefined => {
  const memoryFile = memoryFileOf(stateFile)
  if (NodeFs.existsSync(memoryFile)) return { _tag: "MappedFile", path: memoryFile }
  return streamHasLegacyRam(stateFile) ? undefined : { _tag: "Anonymous" }
}

/** The RAM section, with its block names, opens the stream. */
const streamHasLegacyRam = (stateFile: string): boolean => {
  let fd: number | undefined
  try {
    fd = NodeFs.openSync(stateFile, "r")
    const head = Buffer.alloc(64 * 1024)
    const n = NodeFs.readSync(fd, head, 0, head.length, 0)
    const start = head.subarray(0, n)
    return start.includes("\x0bmicrovm.ram", 0, "latin1") || start.includes("\x06pc.ram", 0, "latin1")
  } catch {
    return false
  } finally {
    if (fd !== undefined) NodeFs.closeSync(fd)
  }
}

/** The `/proc` path of the VMM's shared guest-memory memfd, if its RAM is one. */
const sharedMemoryOf = (pid: number): string | undefined => {
  const dir = `/proc/${pid}/fd`
  try {
    for (const fd of NodeFs.readdirSync(dir)) {
      const path = NodePath.join(dir, fd)
      try {
        const target = NodeFs.readlinkSync(path)
        if (
          target.startsWith("/memfd:memory-backend-memfd")
          || target.startsWith(`${sharedMemoryDir}/microagent-`)
        ) {
          return path
        }
      } catch {
        // Closed meanwhile.
      }
    }
  } catch {
    return undefined
  }
  return undefined
}

/** Where a restore's own copy of saved memory is made: a tmpfs, so that shared RAM stays in memory. */
const sharedMemoryDir = "/dev/shm"

/**
 * A restore's own copy of a saved memory file, shared like a booted VM's memfd (so that its captures
 * save memory as a file again). Without a writable tmpfs the file is mapped copy-on-write instead.
 * Copies left by processes that died before their VMM mapped them are removed first.
 */
const ownCopyOf = (path: string): Effect.Effect<GuestMemory, Permanent> =>
  Effect.suspend(() => {
    try {
      NodeFs.accessSync(sharedMemoryDir, NodeFs.constants.W_OK)
    } catch {
      return Effect.succeed<GuestMemory>({ _tag: "MappedFile", path })
    }
    for (const entry of NodeFs.readdirSync(sharedMemoryDir)) {
      const owner = /^microagent-(\d+)-[0-9a-f]+\.mem$/.exec(entry)
      if (owner !== null && !isAlive(Number(owner[1]), undefined)) {
        NodeFs.rmSync(NodePath.join(sharedMemoryDir, entry), { force: true })
      }
    }
    const copy = NodePath.join(
      sharedMemoryDir,
      `microagent-${process.pid}-${randomBytes(6).toString("hex")}.mem`
    )
    return copyMemory(path, copy).pipe(Effect.as<GuestMemory>({ _tag: "SharedFile", path: copy }))
  })

/** A restored VM's console log begins with the saved VM's, then says when it was restored. */
const seedConsole = (stateFile: string, consoleLog: string) =>
  Effect.sync(() => {
    try {
      const saved = NodeFs.readFileSync(consoleFileOf(stateFile))
      const tail = saved.length > 0 && saved[saved.length - 1] !== 0x0a ? "\n" : ""
      NodeFs.writeFileSync(
        consoleLog,
        Buffer.concat([saved, Buffer.from(`${tail}microagent: restored at ${new Date().toISOString()}\n`)]),
        { mode: 0o600 }
      )
    } catch {
      // A state saved without its console log: the log starts with what the restored VM prints.
    }
  })

/** A sparse copy (pages the guest never touched are holes), 0600 from the start. */
const copyMemory = (from: string, to: string) =>
  Effect.async<void, Permanent>((resume) => {
    try {
      NodeFs.writeFileSync(to, "", { mode: 0o600 })
    } catch (cause) {
      return resume(Effect.fail(new Permanent({ message: `cannot create ${to}: ${String(cause)}` })))
    }
    NodeChild.execFile("cp", ["--sparse=always", from, to], (error, _stdout, stderr) => {
      if (error === null) return resume(Effect.void)
      NodeFs.rmSync(to, { force: true })
      resume(
        Effect.fail(
          new Permanent({
            message: `copying the guest memory to ${to} failed: ${String(stderr).trim() || error.message}`,
            remediation: "check the free space of the state directory's filesystem"
          })
        )
      )
    })
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

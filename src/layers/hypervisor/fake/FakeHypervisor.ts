/**
 * The fake backend, for the fast test tier only: the "VMM" is a detached host process that stands for
 * the VM's lifetime (so state survives across CLI processes, like a real detached VMM), and the
 * "guest" runs commands on the host inside the workspace's scratch directory. It honours the same
 * capability table and lifecycle contract as a real backend. Named volumes are host directories
 * mounted as symlinks in that directory (FakeDisks.ts), secrets files under its `run/secrets`
 * (FakeGuestChannel.ts), and `cp` reads and writes the directory itself (the `DirectoryDisk` capability).
 */
import { Duration, Effect, Exit, Layer, Schedule } from "effect"
import { spawn } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Permanent, Transient, Unsupported } from "../../../domain/Errors.ts"
import { type Capability, Hypervisor, type HypervisorShape, VmHandle } from "../../../services/Hypervisor.ts"
import { faultPoint } from "../../process/FaultPoint.ts"
import { isAlive, signal, startTimeOf, stateOf, waitGone } from "../../process/Processes.ts"
import { mountDisks, unmountAll } from "./FakeDisks.ts"
import { removeSecrets } from "./FakeGuestChannel.ts"
import { endGroups } from "./FakeGuestProcesses.ts"

const capabilities: ReadonlySet<Capability> = new Set<Capability>([
  "StructuredExec",
  "PauseResume",
  "Snapshot",
  "Volumes",
  "Secrets",
  "LiveFileCopy",
  "OfflineFileCopy",
  "DirectoryDisk",
  "NamedNetworks" // simulated: FakeNetworkFabric.ts
])

const appendConsole = (handle: { consoleLog: string }, line: string) =>
  Effect.sync(() => NodeFs.appendFileSync(handle.consoleLog, `${line}\n`, { mode: 0o600 }))

/**
 * What the fake guest left running ends with its VM; its disks are unmounted and its secrets removed,
 * as a real VM's go with its tmpfs and its block devices.
 */
const endFakeGuest = (handle: VmHandle) => {
  const channel = handle.channel as { readonly _tag: string; readonly root?: string }
  if (channel._tag === "HostDirectory" && channel.root !== undefined) endGuestIn(channel.root)
}

const endGuestIn = (root: string) => {
  endGroups(root)
  removeSecrets(root)
  unmountAll(root)
}
const launch: HypervisorShape["launch"] = (config) =>
  Effect.gen(function*() {
    if (config.ports.length > 0) {
      return yield* new Unsupported({
        message: "the fake backend does not publish ports",
        remediation: "use --backend qemu",
        backend: "fake",
        feature: "NetworkPublish"
      })
    }
    if (!NodeFs.existsSync(config.rootfsPath)) {
      return yield* new Permanent({
        message: `root filesystem ${config.rootfsPath} is missing`,
        remediation: "delete and re-create the workspace"
      })
    }
    // What a VM that died without a halt left in its root (secrets, mounts) goes before this one boots.
    endGuestIn(config.rootfsPath)
    const consoleLog = NodePath.join(config.runtimeDir, "console.log")
    return yield* Effect.uninterruptibleMask((restore) =>
      Effect.gen(function*() {
        // A process that lives until it is signalled, detached from our process group and stdio.
        const child = yield* Effect.try({
          try: () => {
            const proc = spawn("sleep", ["2147483647"], { detached: true, stdio: "ignore" })
            proc.unref()
            return proc
          },
          catch: (cause) =>
            new Transient({ message: `fake VMM did not start: ${String(cause)}`, remediation: "" })
        })
        const pid = child.pid
        if (pid === undefined) {
          return yield* new Transient({ message: "fake VMM did not start", remediation: "retry" })
        }
        const handle = new VmHandle({
          backend: "fake",
          pid,
          pidStartTime: startTimeOf(pid) ?? "",
          channel: { _tag: "HostDirectory", root: config.rootfsPath },
          consoleLog
        })
        // Like a real VMM's pid file: lets `gc` find the process even if the record is lost.
        NodeFs.writeFileSync(NodePath.join(config.runtimeDir, "vmm.pid"), `${pid} ${handle.pidStartTime}\n`, {
          mode: 0o600
        })
        // Like a real launch, one that fails or is interrupted from here on leaves no VMM behind.
        yield* restore(
          mountDisks(config).pipe(
            Effect.zipRight(faultPoint("vmm.booting")),
            Effect.zipRight(appendConsole(
              handle,
              `fake: booted ${config.hostname} (${config.cpus} vCPU, ${config.memoryMiB} MiB${
                config.disks.length === 0 ? "" : `, ${config.disks.length} disk(s)`
              })`
            ))
          )
        ).pipe(
          Effect.onExit((exit) => Exit.isSuccess(exit) ? Effect.void : make.kill(handle).pipe(Effect.ignore))
        )
        return handle
      })
    )
  })

export const make: HypervisorShape = {
  backend: "fake",
  capabilities,
  launch,
  attach: (handle) =>
    isAlive(handle.pid, handle.pidStartTime)
      ? Effect.succeed(handle)
      : Effect.fail(
        new Transient({
          message: `the VMM (pid ${handle.pid}) is gone`,
          remediation: "start the workspace again"
        })
      ),
  inspect: (handle) =>
    Effect.sync(() =>
      !isAlive(handle.pid, handle.pidStartTime)
        ? "exited" as const
        : stateOf(handle.pid) === "T"
        ? "paused" as const
        : "running" as const
    ),
  halt: (handle, timeoutSeconds) =>
    Effect.gen(function*() {
      if (!isAlive(handle.pid, handle.pidStartTime)) return
      yield* appendConsole(handle, "fake: shutdown requested")
      signal(handle.pid, "SIGCONT")
      signal(handle.pid, "SIGTERM")
      const gone = yield* waitGone(handle.pid, handle.pidStartTime, `${timeoutSeconds} seconds`)
      if (!gone) {
        return yield* new Transient({
          message: `the VM did not power off within ${timeoutSeconds}s`,
          remediation: "use `microagent kill` to stop it at once"
        })
      }
      endFakeGuest(handle)
      yield* appendConsole(handle, "fake: powered off")
    }),
  kill: (handle) =>
    Effect.gen(function*() {
      endFakeGuest(handle)
      if (!isAlive(handle.pid, handle.pidStartTime)) return
      signal(handle.pid, "SIGKILL")
      yield* waitGone(handle.pid, handle.pidStartTime, "5 seconds")
    }),
  // A signal is delivered asynchronously: like QMP's `stop` and `cont`, these return once it has been.
  pause: (handle) =>
    Effect.sync(() => signal(handle.pid, "SIGSTOP")).pipe(
      Effect.zipRight(untilState(handle, (state) => state === "T"))
    ),
  resume: (handle) =>
    Effect.sync(() => signal(handle.pid, "SIGCONT")).pipe(
      Effect.zipRight(untilState(handle, (state) => state !== "T"))
    ),
  // No memory to capture: the fake records which VM the state came from.
  saveState: (handle, file) =>
    Effect.sync(() => NodeFs.writeFileSync(file, `fake vm state of pid ${handle.pid}\n`, { mode: 0o600 })),
  // Nothing to load: a fresh "VM" that says in its console which state it came from.
  restore: (config, stateFile) =>
    Effect.gen(function*() {
      if (!NodeFs.existsSync(stateFile)) {
        return yield* new Permanent({ message: `VM state ${stateFile} is missing`, remediation: "" })
      }
      const handle = yield* launch(config)
      yield* appendConsole(handle, `fake: restored from ${stateFile}`)
      return handle
    }),
  // No network to cut.
  sever: () => Effect.void
}

/** Waits (up to 5 s) until the process's state letter satisfies `wanted`, or it is gone. */
const untilState = (handle: VmHandle, wanted: (state: string | undefined) => boolean) =>
  Effect.suspend(() =>
    !isAlive(handle.pid, handle.pidStartTime) || wanted(stateOf(handle.pid))
      ? Effect.void
      : Effect.fail("not yet")
  ).pipe(
    Effect.retry(Schedule.spaced(Duration.millis(5))),
    Effect.timeout(Duration.seconds(5)),
    Effect.catchAll(() =>
      Effect.fail(
        new Transient({
          message: `the fake VM (pid ${handle.pid}) did not change state`,
          remediation: "retry"
        })
      )
    )
  )

export const layer = Layer.succeed(Hypervisor, make)

/**
 * The results of `perf boot` and `perf footprint`.
 */
import { Schema } from "effect"
import { Backend, NetworkMode } from "./Workspace.ts"

const Ms = Schema.Number

/**
 * Where a boot's time went, in milliseconds; together they span VMM start to the first result.
 * The kernel phase is the guest's own uptime when its agent started, so it is measured by the
 * guest's clock, which under emulation stands still while the early kernel runs with interrupts
 * off: that time shows up in `firmwareMs` instead.
 */
export const BootPhases = Schema.Struct({
  /** VMM start to the guest kernel's first instruction (QEMU set-up, firmware, kernel loading). */
  firmwareMs: Ms,
  /** The kernel's own boot, up to running /init (the agent). */
  kernelMs: Ms,
  /** /init to agent ready: modules, root switch, mounts, network, then the channel's handshake. */
  initMs: Ms,
  /** Agent ready to the first command's result. */
  execMs: Ms
})
export type BootPhases = typeof BootPhases.Type

/** Where a warm start's time went (a template restored instead of a boot), in milliseconds. */
export const WarmPhases = Schema.Struct({
  /** `start` called to the VMM up: the template found (or built) and its disk copied. */
  prepareMs: Ms,
  /** VMM up to `start` done: device state loaded, memory mapped, agent answered, the guest made this workspace's. */
  restoreMs: Ms,
  /** Agent ready to the first command's result. */
  execMs: Ms
})
export type WarmPhases = typeof WarmPhases.Type

/** One boot, as edges in milliseconds since the run began (the timer stops before teardown). */
export const BootRun = Schema.Struct({
  ok: Schema.Boolean,
  error: Schema.optional(Schema.String),
  /** Image ensured, private rootfs made, record written. */
  createdMs: Schema.optional(Ms),
  /** The VMM process is up (its console log opened). */
  vmmStartedMs: Schema.optional(Ms),
  /** The guest kernel began: when the agent's first console line appeared minus the guest's uptime in it. */
  kernelStartedMs: Schema.optional(Ms),
  /** The agent started as /init (its first console line appeared). */
  initStartedMs: Schema.optional(Ms),
  /** The guest agent answered the handshake (`start` returned). */
  agentReadyMs: Schema.optional(Ms),
  /** The first command's result arrived. */
  firstExecMs: Schema.optional(Ms),
  /** The guest's own uptime when its agent was ready (from the console). */
  guestUptimeAtReadyMs: Schema.optional(Ms),
  /** The guest's own uptime when its agent started as /init (from the console). */
  guestUptimeAtInitMs: Schema.optional(Ms),
  phases: Schema.optional(BootPhases),
  /** A template was restored instead of a boot (`--warm`); the boot phases then do not apply. */
  warm: Schema.optional(Schema.Boolean),
  /** This run built the template it restored (the first warm start of its shape). */
  templateBuilt: Schema.optional(Schema.Boolean),
  /** When the run started `start` (edges above are from the run's beginning). */
  startCalledMs: Schema.optional(Ms),
  warmPhases: Schema.optional(WarmPhases),
  exitCode: Schema.optional(Schema.Int)
})
export type BootRun = typeof BootRun.Type

const Stat = Schema.Struct({ min: Ms, median: Ms, max: Ms })

export const PerfBootPayload = Schema.Struct({
  image: Schema.optional(Schema.String),
  runs: Schema.optional(Schema.Int.pipe(Schema.between(1, 100))),
  command: Schema.optional(Schema.Array(Schema.String)),
  network: Schema.optional(NetworkMode),
  backend: Schema.optional(Backend),
  /** Time warm starts (templates restored) instead of cold boots. */
  warm: Schema.optional(Schema.Boolean)
})

export const PerfBootResult = Schema.Struct({
  image: Schema.String,
  backend: Backend,
  command: Schema.Array(Schema.String),
  runs: Schema.Array(BootRun),
  /** Per edge, over the successful runs. */
  summary: Schema.Struct({
    count: Schema.Int,
    failures: Schema.Int,
    createdMs: Schema.optional(Stat),
    vmmStartedMs: Schema.optional(Stat),
    kernelStartedMs: Schema.optional(Stat),
    initStartedMs: Schema.optional(Stat),
    agentReadyMs: Schema.optional(Stat),
    firstExecMs: Schema.optional(Stat),
    /** Per phase, over the successful runs that have all four. */
    phases: Schema.optional(Schema.Struct({
      firmwareMs: Stat,
      kernelMs: Stat,
      initMs: Stat,
      execMs: Stat
    })),
    /** Per warm phase, over the successful warm runs that did not build their template. */
    warmPhases: Schema.optional(Schema.Struct({
      prepareMs: Stat,
      restoreMs: Stat,
      execMs: Stat
    }))
  })
})
export type PerfBootResult = typeof PerfBootResult.Type

/** Host memory of a process, from /proc (PSS when smaps_rollup is readable). */
export const ProcessMemory = Schema.Struct({
  pid: Schema.Int,
  rssKiB: Schema.Int,
  pssKiB: Schema.optional(Schema.Int)
})
export type ProcessMemory = typeof ProcessMemory.Type

export const WorkspaceFootprint = Schema.Struct({
  workspace: Schema.String,
  backend: Backend,
  vmm: Schema.optional(ProcessMemory),
  rootfs: Schema.Struct({
    path: Schema.String,
    /** The disk's size as its file says. */
    apparentBytes: Schema.Int,
    /** What it takes on the host's disk (sparse files and reflink clones take less). */
    allocatedBytes: Schema.Int
  })
})

export const PerfFootprintResult = Schema.Struct({
  /** The process that holds the VMs (the runtime, when called through it). */
  runtime: Schema.extend(ProcessMemory, Schema.Struct({ heapUsedBytes: Schema.Int })),
  workspaces: Schema.Array(WorkspaceFootprint)
})
export type PerfFootprintResult = typeof PerfFootprintResult.Type

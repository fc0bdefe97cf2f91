/**
 * The backend that boots and controls VMMs. One implementation per backend (qemu, firecracker, fake);
 * each declares what it can do, and refuses the rest with `Unsupported`.
 */
import { Context, type Effect, Schema } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Addressing } from "../domain/Addressing.ts"
import type { Conflict, InvalidInput, NotFound, Permanent, Transient, Unsupported } from "../domain/Errors.ts"
import { Backend, NetworkMode } from "../domain/Workspace.ts"

export const Capability = Schema.Literal(
  "StructuredExec",
  "Console",
  "PauseResume",
  "LiveFileCopy",
  "OfflineFileCopy",
  "NetworkPublish",
  "NamedNetworks",
  "Volumes",
  /** Attaches tar bundles (built into one-shot disks) and ext4 image files, besides named volumes. */
  "DiskImages",
  "Secrets",
  "Snapshot",
  /**
   * The workspace's disk is a host directory (`rootfsPath`) standing for the guest's root, not a disk
   * image: `cp` reads and writes it directly, running or stopped (the fake backend).
   */
  "DirectoryDisk",
  /**
   * Boots a root disk that is a qcow2 overlay (`overlayFileOf(rootfsPath)`) over a read-only raw base,
   * so workspaces made from one snapshot share its disk copy-on-write (see `rootDiskOf`).
   */
  "OverlayDisk"
)
export type Capability = typeof Capability.Type

/** How the host reaches the guest agent. */
export const ChannelEndpoint = Schema.Union(
  Schema.TaggedStruct("UnixSocket", { path: Schema.String }),
  /** The fake backend: commands run on the host under `root`. */
  Schema.TaggedStruct("HostDirectory", { root: Schema.String })
)
export type ChannelEndpoint = typeof ChannelEndpoint.Type

export class DiskAttachment extends Schema.Class<DiskAttachment>("DiskAttachment")({
  name: Schema.String,
  path: Schema.String,
  mountpoint: Schema.String,
  readOnly: Schema.Boolean,
  /**
   * What the disk is: a named volume, a bundle's one-shot disk, an ext4 image file attached as it is, or
   * an empty stand-in that the guest does not mount at boot (a warm-start template's, whose restores put
   * a workspace's disk in its place).
   */
  kind: Schema.optional(Schema.Literal("volume", "bundle", "image", "stand-in"))
}) {}

/** Guest block device names in attachment order: the root is vda, extra disks vdb, vdc, … (virtio's). */
export const diskDeviceName = (index: number): string => {
  // vda … vdz, then vdaa … like the kernel's virtio_blk naming.
  const letters = (n: number): string =>
    n < 26 ? String.fromCharCode(97 + n) : letters(Math.floor(n / 26) - 1) + letters(n % 26)
  return `vd${letters(index)}`
}

/**
 * The extra disks the guest's agent mounts, `vdb:/mnt:rw,…` (its kernel command line at boot, FRESHEN
 * after a template's restore); stand-ins keep their device names but are not mounted. Undefined: none.
 */
export const guestDiskList = (disks: ReadonlyArray<DiskAttachment>): string | undefined => {
  const entries = disks.flatMap((d, i) =>
    d.kind === "stand-in" ? [] : [`${diskDeviceName(i + 1)}:${d.mountpoint}:${d.readOnly ? "ro" : "rw"}`]
  )
  return entries.length === 0 ? undefined : entries.join(",")
}

/**
 * Where a backend without block devices (the fake) keeps a named volume's data: a directory beside the
 * volume's ext4 file, which such a backend never reads or writes. It goes with the volume.
 */
export const volumeDirectoryOf = (volumePath: string): string => `${volumePath.replace(/\.ext4$/, "")}.fake.d`

export class PortForward extends Schema.Class<PortForward>("PortForward")({
  hostIp: Schema.String,
  hostPort: Schema.Int,
  guestPort: Schema.Int,
  protocol: Schema.Literal("tcp")
}) {}

/** A NIC on a named network: a tap QEMU creates on the host, found by the guest through its MAC. */
export class NicAttachment extends Schema.Class<NicAttachment>("NicAttachment")({
  network: Schema.String,
  tap: Schema.String,
  mac: Schema.String,
  /** The guest's address, `A.B.C.D/N`. */
  address: Schema.String,
  /**
   * A warm-start template's stand-in: a NIC with nothing behind it (no tap) that the guest leaves down,
   * whose place a restore gives to a workspace's NIC on a named network (`tap` and `address` unused).
   */
  standIn: Schema.optional(Schema.Boolean)
}) {}

/** The guest port of the model channel: the guest reaches its model at http://127.0.0.1:11434/v1. */
export const guestModelPort = 11434

/** The MAC of a template's stand-in NIC number `index` (from 0): locally administered, fixed. */
export const standInNicMac = (index: number): string =>
  `02:6d:61:ff:00:${(index + 1).toString(16).padStart(2, "0")}`

/**
 * The NICs on named networks as the agent takes them after a template's restore (FRESHEN's `nets`):
 * each one's stand-in MAC, its own MAC and its address, `OLDMAC@NEWMAC@A.B.C.D/N,…`. Undefined: none.
 */
export const guestNicList = (nics: ReadonlyArray<NicAttachment>): string | undefined =>
  nics.length === 0
    ? undefined
    : nics.map((nic, i) => `${standInNicMac(i)}@${nic.mac}@${nic.address}`).join(",")

/** Everything a backend needs to boot one VM. */
export class LaunchConfig extends Schema.Class<LaunchConfig>("LaunchConfig")({
  workspace: Schema.String,
  /** Per-run directory for sockets, the console log and pid files (0700). */
  runtimeDir: Schema.String,
  rootfsPath: Schema.String,
  kernelPath: Schema.optional(Schema.String),
  initrdPath: Schema.optional(Schema.String),
  /** The kernel's CONFIG_HZ when known (lets the backend preset the guest's delay-loop constant). */
  kernelHz: Schema.optional(Schema.Int),
  memoryMiB: Schema.Int,
  cpus: Schema.Int,
  hostname: Schema.String,
  network: NetworkMode,
  /** The guest's own addressing on the user network (absent: QEMU's usual one). */
  addressing: Schema.optional(Addressing),
  ports: Schema.optionalWith(Schema.Array(PortForward), { default: () => [] }),
  disks: Schema.optionalWith(Schema.Array(DiskAttachment), { default: () => [] }),
  /** NICs on named networks, besides the user-mode one. */
  nics: Schema.optionalWith(Schema.Array(NicAttachment), { default: () => [] }),
  /** Seconds allowed until the guest agent answers. */
  bootTimeoutSeconds: Schema.Number,
  /**
   * Cold boots tried when one stalls or times out (absent: 2, the second on the same disk); 1 lets a
   * measurement see every stall.
   */
  bootAttempts: Schema.optional(Schema.Int.pipe(Schema.between(1, 3))),
  /**
   * The user network behind the egress mediator: the VMM runs in this network namespace and uses
   * the tap made there instead of its own user-mode NAT (which would reach the host's loopback).
   */
  egress: Schema.optional(Schema.Struct({ netns: Schema.String, tap: Schema.String })),
  /**
   * A model channel (the workspace is paired with a model): the guest's 127.0.0.1:11434 is carried over
   * a second guest channel to `model.sock` in the runtime directory, where the model bridge serves it.
   */
  modelChannel: Schema.optional(Schema.Boolean),
  /**
   * Credential broker endpoints: the guest's 127.0.0.1 port of each, in order. Endpoint N is carried
   * over a guest channel of its own to `brokerSocketOf(runtimeDir, N)`, where the broker serves it.
   */
  brokerPorts: Schema.optional(Schema.Array(Schema.Number)),
  /**
   * The model and broker channels are attached but the guest is not told to serve them at boot: a
   * warm-start template's, whose restores have the agent start the forwarders (FRESHEN).
   */
  channelsUnannounced: Schema.optional(Schema.Boolean),
  /**
   * The user network's NIC with nothing behind it (no NAT, no tap): a VM saved so has no network
   * backend state in its stream, and restores onto either backend (warm-start templates).
   */
  unpluggedNic: Schema.optional(Schema.Boolean)
}) {}

/** A launched VMM, persisted in the store so that any later process can re-attach to it. */
export class VmHandle extends Schema.Class<VmHandle>("VmHandle")({
  backend: Backend,
  pid: Schema.Int,
  /** Start time of `pid` (from /proc), so a recycled pid is never mistaken for our VMM. */
  pidStartTime: Schema.optional(Schema.String),
  channel: ChannelEndpoint,
  consoleLog: Schema.String,
  controlSocket: Schema.optional(Schema.String)
}) {}

export type VmStatus = "running" | "paused" | "exited"

/**
 * What booting a VMM (`launch`, `restore`) can fail with: a bad config or boot profile (`InvalidInput`),
 * a missing kernel, initramfs or state file (`NotFound`), a VMM already running in the runtime directory
 * (`Conflict`), a missing binary or a refused start (`Permanent`), a config the backend cannot carry out
 * (`Unsupported`), a guest agent that does not answer in time (`Transient`). The other methods fail with
 * `InvalidInput` for a handle of another backend.
 */
export type LaunchError = Unsupported | Permanent | InvalidInput | NotFound | Conflict | Transient

export interface LaunchOptions {
  /**
   * Before a second boot (a backend boots once more when the first stalls: `bootAttempts`), the
   * config to boot with: host-side attachments that followed the first VMM out (the egress mediator
   * leaves with it) made again. Absent: the same config.
   */
  readonly beforeSecondBoot?: Effect.Effect<LaunchConfig, LaunchError> | undefined
}

export interface HypervisorShape {
  readonly backend: Backend
  readonly capabilities: ReadonlySet<Capability>
  /**
   * What a booted guest depends on besides its machine shape, kernel and disk, as one word (for QEMU
   * the boot profile: kernel options and emulated CPU). A warm-start template is kept per variant, so
   * that a change of profile never restores a guest booted the other way. Undefined: none.
   */
  readonly guestVariant?: (() => string | undefined) | undefined
  /** Boots a detached VMM and waits until its guest agent answers (bounded by `bootTimeoutSeconds`). */
  readonly launch: (config: LaunchConfig, options?: LaunchOptions) => Effect.Effect<VmHandle, LaunchError>
  /** Confirms that a recorded handle still names a live VMM of ours. */
  readonly attach: (handle: VmHandle) => Effect.Effect<VmHandle, Transient | NotFound | InvalidInput>
  readonly inspect: (handle: VmHandle) => Effect.Effect<VmStatus, Transient | InvalidInput>
  /** Asks the guest to shut down; waits at most `timeoutSeconds`. Fails with `Transient` on overrun. */
  readonly halt: (handle: VmHandle, timeoutSeconds: number) => Effect.Effect<void, Transient | InvalidInput>
  /** Ends the VMM at once. Idempotent. */
  readonly kill: (handle: VmHandle) => Effect.Effect<void, InvalidInput>
  readonly pause: (handle: VmHandle) => Effect.Effect<void, Transient | Conflict | InvalidInput>
  readonly resume: (handle: VmHandle) => Effect.Effect<void, Transient | Conflict | InvalidInput>
  /**
   * Writes the device state and memory of a paused VM to `file` (created 0600), the memory either in
   * the stream or as its own file (`memoryFileOf(file)`, sparse, 0600). The VM stays paused; `resume`
   * lets it run on. Backends without the `Snapshot` capability fail with `Unsupported`.
   */
  readonly saveState: (
    handle: VmHandle,
    file: string
  ) => Effect.Effect<void, Permanent | Transient | Conflict | InvalidInput>
  /**
   * Starts a VMM with the machine of `config` and loads the device state and memory that `saveState`
   * wrote to `stateFile` instead of booting, lets it run, and waits until its guest agent answers
   * (bounded by `bootTimeoutSeconds`). The config must describe the machine that was saved (memory,
   * vCPUs, devices). Backends without the `Snapshot` capability fail with `Unsupported`.
   */
  readonly restore: (
    config: LaunchConfig,
    stateFile: string,
    options?: RestoreOptions
  ) => Effect.Effect<VmHandle, LaunchError>
  /**
   * Cuts every network link of the VM at once, in the VMM (the guest's NICs lose carrier; nothing it
   * sends leaves, nothing reaches it), whatever the network behind them. Used by quarantine.
   */
  readonly sever: (handle: VmHandle) => Effect.Effect<void, Transient | Conflict | InvalidInput>
}

export interface RestoreOptions {
  /**
   * Give the VM its own copy of a saved memory file instead of mapping the file copy-on-write: pages
   * are not shared with other restores, but the VM's own captures save memory as a file again (warm
   * starts of workspaces that are kept, which are ordinary workspaces afterwards).
   */
  readonly ownMemory?: boolean | undefined
}

/**
 * The guest memory file `saveState` may write beside the state file: the migration stream then holds
 * only device state, and `restore` maps this file (copy-on-write) instead of reading RAM from the
 * stream. Whoever copies or removes a state file handles its memory file with it.
 */
export const memoryFileOf = (stateFile: string): string => `${stateFile}.mem`

/**
 * The console log `saveState` keeps beside the state file (what the VM printed until then): a restore's
 * console log begins with it, so `logs` of a restored VM shows its boot.
 */
export const consoleFileOf = (stateFile: string): string => `${stateFile}.console`

/**
 * Where a workspace's root disk is a qcow2 overlay instead of a raw image: beside `rootfsPath`, under a
 * name of the host's choosing. The format is never read from a disk's contents (a guest writes its raw
 * disk and could make it look like qcow2 naming any host file as its backing): a disk is qcow2 only
 * when it is this file and no raw disk is at `rootfsPath`.
 */
export const overlayFileOf = (rootfsPath: string): string => `${rootfsPath}.qcow2`

/** The file holding a workspace's root disk and its format: the raw image when there is one. */
export const rootDiskOf = (rootfsPath: string): { readonly path: string; readonly format: "raw" | "qcow2" } =>
  !NodeFs.existsSync(rootfsPath) && NodeFs.existsSync(overlayFileOf(rootfsPath))
    ? { path: overlayFileOf(rootfsPath), format: "qcow2" }
    : { path: rootfsPath, format: "raw" }

export class Hypervisor extends Context.Tag("microagent/Hypervisor")<Hypervisor, HypervisorShape>() {}

/** Where the VMM listens for the broker of endpoint `index` (see LaunchConfig.brokerPorts). */
export const brokerSocketOf = (runtimeDir: string, index: number) =>
  NodePath.join(runtimeDir, `broker-${index}.sock`)

/**
 * What a workspace costs the host while it runs (`stats`), and what a root disk resize did (`resize`).
 */
import { Schema } from "effect"

/** Apparent size (what the guest sees) and allocated size (what the host's disk holds) of a file. */
export const DiskUse = Schema.Struct({
  path: Schema.String,
  apparentBytes: Schema.Number,
  allocatedBytes: Schema.Number
})
export type DiskUse = typeof DiskUse.Type

/** One sample of a running workspace's VMM, taken from outside the guest (/proc of the host). */
export const WorkspaceStats = Schema.Struct({
  workspace: Schema.String,
  /** The VMM's process id. */
  pid: Schema.Int,
  sampledAt: Schema.String,
  /** How long the CPU figure was measured over. */
  intervalMs: Schema.Number,
  /** CPU time the VMM has used since it started (user + system), in seconds. */
  cpuSeconds: Schema.Number,
  /** CPU use over the interval, in percent of one core (a guest busy on two vCPUs reads about 200). */
  cpuPercent: Schema.Number,
  /** Resident memory of the VMM (the guest's touched memory plus the VMM's own). */
  memoryBytes: Schema.Number,
  /** Bytes the VMM read from and wrote to storage since it started (/proc/PID/io), when readable. */
  ioReadBytes: Schema.optional(Schema.Number),
  ioWriteBytes: Schema.optional(Schema.Number),
  /** The root disk file. */
  disk: DiskUse
})
export type WorkspaceStats = typeof WorkspaceStats.Type

/** The filesystem inside an ext4 disk file, and the file on the host. */
export const Ext4Usage = Schema.Struct({
  sizeMiB: Schema.Number,
  fsUsedMiB: Schema.Number,
  fsFreeMiB: Schema.Number,
  hostAllocatedMiB: Schema.Number,
  usedPercent: Schema.Number
})
export type Ext4Usage = typeof Ext4Usage.Type

export const ResizeResult = Schema.Struct({
  workspace: Schema.String,
  from_size_mib: Schema.Number,
  to_size_mib: Schema.Number,
  usage: Ext4Usage
})
export type ResizeResult = typeof ResizeResult.Type

/**
 * `stats` (what a running workspace costs the host, once or followed) and `resize` (a stopped
 * workspace's root disk, offline). Both run in this process against the store: `stats` reads /proc
 * of the VMM, `resize` runs e2fsprogs on the disk file.
 */
import { Args, Command, Options } from "@effect/cli"
import { Duration, Effect } from "effect"
import type { ResizeResult, WorkspaceStats } from "../domain/Usage.ts"
import { Ext4Disks } from "../layers/rootfs/Ext4Resize.ts"
import { resize } from "../programs/Resize.ts"
import { stats } from "../programs/Stats.ts"
import { optionalDuration, orUndefined } from "./Flags.ts"
import { withWorkspaceBackend } from "./Layers.ts"
import { emit } from "./Output.ts"

const MiB = 1024 * 1024
const mib = (bytes: number) => `${(bytes / MiB).toFixed(1)}MiB`

/** The original's text form, `pid=… cpu=…% mem=… io_read=… io_write=…`, and the root disk's use. */
export const statsLine = (s: WorkspaceStats) =>
  [
    `pid=${s.pid}`,
    `cpu=${s.cpuPercent.toFixed(1)}%`,
    `mem=${mib(s.memoryBytes)}`,
    ...(s.ioReadBytes === undefined ? [] : [`io_read=${mib(s.ioReadBytes)}`]),
    ...(s.ioWriteBytes === undefined ? [] : [`io_write=${mib(s.ioWriteBytes)}`]),
    `disk=${mib(s.disk.allocatedBytes)}/${mib(s.disk.apparentBytes)}`
  ].join(" ")

const statsCommand = Command.make("stats", {
  follow: Options.boolean("follow").pipe(
    Options.withAlias("f"),
    Options.withDescription("keep sampling until the workspace stops or Ctrl-C (JSON lines with --json)")
  ),
  interval: optionalDuration("interval", "how long each sample measures CPU use over (default 1s)"),
  name: Args.text({ name: "name" }).pipe(Args.withDescription("a running workspace"))
}, ({ follow, interval, name }) => {
  const every = Duration.seconds(orUndefined(interval) ?? 1)
  const sample = stats(name, { interval: every })
  return withWorkspaceBackend(
    name,
    follow
      // Each sample takes its interval; the first failure (the workspace stopped) ends the loop,
      // quietly once at least one sample was printed.
      ? Effect.gen(function*() {
        yield* Effect.flatMap(sample, (s) => emit(s, statsLine))
        yield* Effect.forever(Effect.flatMap(sample, (s) => emit(s, statsLine))).pipe(
          Effect.catchTag("Conflict", () => Effect.void)
        )
      })
      : Effect.flatMap(sample, (s) => emit(s, statsLine))
  )
}).pipe(
  Command.withDescription(
    "CPU, memory and I/O of a running workspace's VMM, and its disk use, from the host (-f: keep going)"
  )
)

const resizeLine = (r: ResizeResult) =>
  `${r.workspace}: root disk ${r.from_size_mib} MiB -> ${r.to_size_mib} MiB; filesystem ${r.usage.fsUsedMiB} MiB `
  + `used, ${r.usage.fsFreeMiB} MiB free (${r.usage.usedPercent}%), ${r.usage.hostAllocatedMiB} MiB on the host`

const resizeCommand = Command.make("resize", {
  sizeMiB: Options.integer("size-mib").pipe(
    Options.withPseudoName("MIB"),
    Options.withDescription("the new size of the root disk in MiB")
  ),
  name: Args.text({ name: "name" }).pipe(Args.withDescription("a workspace that is not running"))
}, ({ name, sizeMiB }) =>
  withWorkspaceBackend(name, Effect.provide(resize(name, sizeMiB), Ext4Disks)).pipe(
    Effect.flatMap((r) => emit(r, resizeLine))
  )).pipe(
    Command.withDescription(
      "grow or shrink a stopped workspace's root disk offline (e2fsck + resize2fs; shrinking stops at its content)"
    )
  )

export const usageGroup = [statsCommand, resizeCommand] as const

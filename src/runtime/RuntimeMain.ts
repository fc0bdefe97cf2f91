/**
 * How a runtime process runs: `serveRuntime` with its log format, the idle default, a lost race for
 * the lock treated as success, and the memory housekeeping of a long-lived process. Shared by the
 * runtime's own entry (bin.ts, bundled alone so the process does not load the CLI, the MCP server or
 * the YAML parser) and by the CLI's foreground `microagent runtime`.
 */
import { Duration, Effect, Logger, Schedule } from "effect"
import type { Backend } from "../domain/Workspace.ts"
import { dropRuntimeMallocSetting } from "../rpc/Launcher.ts"
import { serveRuntime } from "./Runtime.ts"

const defaultIdleSeconds = () => {
  const fromEnv = Number(process.env.MICROAGENT_RUNTIME_IDLE_SECONDS)
  return Number.isFinite(fromEnv) && fromEnv > 0 ? fromEnv : 30
}

/** External (Buffer) bytes allocated since the last collection that make one worth doing. */
const externalSlackBytes = 8 * 1024 * 1024

/**
 * Kernel and initramfs builds, layer extraction and file copies allocate tens of MiB of Buffers that
 * are garbage a moment later, but a small V8 heap is rarely collected in full, so their memory stays
 * resident for as long as the runtime lives (74 MiB measured after one first boot). When the process
 * was started with --expose-gc (the launcher does so), a full collection runs once the external bytes
 * have grown by `externalSlackBytes`; checking costs one `memoryUsage()` call every few seconds.
 */
const collectGarbage = Effect.suspend(() => {
  const gc = (globalThis as { gc?: () => void }).gc
  if (typeof gc !== "function") return Effect.void
  let baseline = process.memoryUsage().external
  return Effect.sync(() => {
    const external = process.memoryUsage().external
    if (external - baseline < externalSlackBytes) {
      baseline = Math.min(baseline, external)
      return
    }
    gc()
    baseline = process.memoryUsage().external
  }).pipe(Effect.repeat(Schedule.spaced(Duration.seconds(5))), Effect.asVoid)
})

export const runRuntime = (
  root: string,
  options: { readonly idleSeconds?: number | undefined; readonly defaultBackend?: Backend | undefined }
) =>
  Effect.scoped(Effect.gen(function*() {
    yield* Effect.sync(dropRuntimeMallocSetting)
    yield* Effect.forkScoped(collectGarbage)
    yield* serveRuntime(root, {
      idleSeconds: options.idleSeconds ?? defaultIdleSeconds(),
      defaultBackend: options.defaultBackend
    })
  })).pipe(
    // Another runtime serves this directory (or won the race to): nothing to do, but say so.
    Effect.catchTag("Conflict", (conflict) =>
      Effect.sync(() => {
        process.stderr.write(`microagent runtime: ${conflict.message} (${root}); nothing to do\n`)
      })),
    Effect.provide(Logger.replace(Logger.defaultLogger, Logger.withConsoleError(Logger.logfmtLogger)))
  )

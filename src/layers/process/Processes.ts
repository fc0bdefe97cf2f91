/**
 * Small helpers for detached host processes that outlive the process that started them (VMMs):
 * identity by pid plus start time, so a recycled pid is never mistaken for ours.
 */
import { Duration, Effect, Schedule } from "effect"
import * as NodeFs from "node:fs"

/** Field 22 of /proc/PID/stat: the start time in clock ticks since boot; undefined if gone. */
export const startTimeOf = (pid: number): string | undefined => {
  try {
    const stat = NodeFs.readFileSync(`/proc/${pid}/stat`, "utf8")
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return fields[19]
  } catch {
    return undefined
  }
}

/** The one-letter state of /proc/PID/stat (R, S, T for stopped, Z for zombie, …). */
export const stateOf = (pid: number): string | undefined => {
  try {
    const stat = NodeFs.readFileSync(`/proc/${pid}/stat`, "utf8")
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0]
  } catch {
    return undefined
  }
}

/** Alive and the same process (not a zombie, not a recycled pid). */
export const isAlive = (pid: number, startTime: string | undefined): boolean => {
  const state = stateOf(pid)
  if (state === undefined || state === "Z" || state === "X") return false
  return startTime === undefined || startTimeOf(pid) === startTime
}

export const signal = (pid: number, sig: NodeJS.Signals): void => {
  try {
    process.kill(pid, sig)
  } catch {
    // Already gone.
  }
}

/** Polls until the process is gone; false if it outlives `timeout`. */
export const waitGone = (pid: number, startTime: string | undefined, timeout: Duration.DurationInput) =>
  Effect.suspend(() => isAlive(pid, startTime) ? Effect.fail("alive" as const) : Effect.void).pipe(
    Effect.retry(Schedule.spaced(Duration.millis(20))),
    Effect.timeout(timeout),
    Effect.as(true),
    Effect.catchAll(() => Effect.succeed(false))
  )

/**
 * Takes a lock file if free (created exclusively, 0600, holding this process's pid and start time); a
 * lock whose process is gone is removed, so the next attempt takes it. Never waits.
 */
export const tryPidLock = (lock: string): boolean => {
  try {
    const fd = NodeFs.openSync(lock, "wx", 0o600)
    NodeFs.writeSync(fd, `${process.pid} ${startTimeOf(process.pid) ?? ""}`)
    NodeFs.closeSync(fd)
    return true
  } catch {
    let text = ""
    try {
      text = NodeFs.readFileSync(lock, "utf8")
    } catch {
      return false
    }
    const [pid, startTime] = text.split(" ")
    if (!isAlive(Number(pid), startTime === "" ? undefined : startTime)) NodeFs.rmSync(lock, { force: true })
    return false
  }
}

export const releasePidLock = (lock: string) => NodeFs.rmSync(lock, { force: true })

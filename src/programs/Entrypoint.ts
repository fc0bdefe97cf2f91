/**
 * The entrypoint: the shell command each `start` runs in the background once the guest answers, and
 * its result (exit code, capped output, start error, times).
 *
 * The guest keeps the outcome, not the host process: the command runs detached from the exec that
 * launched it and writes its output, exit code and times under `/run/microagent/entrypoint`. Whoever
 * holds the VM's channel (the runtime, every second; `result` and `wait` on demand; `halt` before the
 * guest goes) copies a finished outcome into the workspace's record. So a runtime that restarts while
 * the VM runs loses nothing, and a result outlives the VM once it has been collected.
 */
import { DateTime, Duration, Effect, Option, Schedule } from "effect"
import { NotFound, Transient } from "../domain/Errors.ts"
import { ExecRequest, type ExecResult } from "../domain/Exec.ts"
import { isLive } from "../domain/State.ts"
import { entrypointOutputLimit, EntrypointResult, type Workspace } from "../domain/Workspace.ts"
import { GuestChannel, type GuestError } from "../services/GuestChannel.ts"
import type { VmHandle } from "../services/Hypervisor.ts"
import { StateStore } from "../services/StateStore.ts"
import { guestFailure } from "./Exec.ts"
import { reconcile, vmHandleOf } from "./internal/Reconcile.ts"
import { execRequestFor } from "./internal/Requests.ts"

/**
 * Where the guest keeps the outcome of the current boot's entrypoint: `/run/microagent/entrypoint` (a
 * tmpfs: one boot's worth). Written relative to `/`, the working directory of these bookkeeping
 * commands, so that the fake backend (which maps the guest's `/` to a scratch directory) keeps it there.
 */
export const entrypointDir = "run/microagent/entrypoint"

/** Runs one command on the VM's channel without recording an `exec` event (these are bookkeeping). */
export const guestRun = (handle: VmHandle, request: ExecRequest) =>
  Effect.flatMap(GuestChannel, (channel) =>
    Effect.scoped(
      channel.connect(handle.channel).pipe(Effect.flatMap((connection) => connection.exec(request)))
    ))

const asRoot = (script: string, ...args: Array<string>) =>
  new ExecRequest({
    argv: ["/bin/sh", "-c", script, "microagent", ...args],
    user: "0",
    cwd: "/",
    timeoutSeconds: 30
  })

/**
 * The program to look up before running, when the command starts with a plain word: a missing one is a
 * start error, not an exit code of the shell. Commands that start with shell syntax are not checked.
 */
export const firstProgram = (command: string): string => {
  const first = command.trim().split(/\s+/)[0] ?? ""
  return /^[A-Za-z0-9_./+-]+$/.test(first) ? first : ""
}

// $1 the directory, $2 the command, $3 the program to look up first. The command's subshell outlives
// this script: its descriptors point at files, so the exec that launched it ends at once.
const launchScript = `d=$1
date +%s > "$d/started"
if [ -n "$3" ] && ! command -v "$3" >/dev/null 2>&1; then
  echo "$3: not found" > "$d/start-error"
  date +%s > "$d/finished"
  echo 127 > "$d/exit"
  exit 0
fi
( /bin/sh -c "$2" </dev/null >"$d/stdout" 2>"$d/stderr"
  code=$?
  date +%s > "$d/finished"
  echo $code > "$d/exit.new"
  mv "$d/exit.new" "$d/exit" ) </dev/null >/dev/null 2>&1 &
`

// Exit 3: still running; exit 4: this boot never launched one.
const statusScript = `d=$1
[ -d "$d" ] || exit 4
[ -e "$d/exit" ] || exit 3
printf '%s\\n%s\\n%s\\n' "$(cat "$d/exit")" "$(cat "$d/started")" "$(cat "$d/finished")"
cat "$d/start-error" 2>/dev/null
exit 0`

const epochToUtc = (text: string | undefined) => {
  const seconds = Number(text)
  return text !== undefined && text !== "" && Number.isFinite(seconds)
    ? Option.some(DateTime.unsafeMake(seconds * 1000))
    : Option.none()
}

const nowUtc = DateTime.now

/**
 * Replaces the result of `sessionId` only while it is still that start's and still running; answers
 * whether it did (of two collectors, one records the outcome and its event).
 */
const settle = (name: string, sessionId: string, next: (current: EntrypointResult) => EntrypointResult) =>
  Effect.flatMap(StateStore, (store) => {
    let applied = false
    return store.update(name, (ws) => {
      applied = ws.result !== undefined && ws.result.sessionId === sessionId && ws.result.status === "running"
      return applied ? ({ ...ws, result: next(ws.result!) } as Workspace) : ws
    }).pipe(Effect.map(() => applied))
  })

const startFailed = (current: EntrypointResult, startError: string, at: DateTime.Utc) =>
  new EntrypointResult({
    ...current,
    status: "start_failed",
    exitCode: 127,
    startError,
    finishedAt: at
  })

/**
 * Launches the workspace's entrypoint in the guest of the current session, recording a `running`
 * result (which replaces the previous start's). A command that cannot be launched at all gives a
 * `start_failed` result; the start itself succeeds either way.
 */
export const launchEntrypoint = Effect.fn("launchEntrypoint")(function*(workspace: Workspace) {
  const store = yield* StateStore
  const command = workspace.entrypoint
  const handle = vmHandleOf(workspace)
  if (command === undefined || workspace.sessionId === undefined || Option.isNone(handle)) return workspace
  const sessionId = workspace.sessionId
  const user = workspace.image.user ?? ""
  // The directory is made as root (the image's user may not write to /run), then given to that user;
  // it exists before the record says `running`, so a collector never finds a running one without it.
  // An earlier boot's outcome goes first: a VM's /run is a fresh tmpfs, but the fake backend's "guest"
  // keeps it, and a collector must not read that `exit` beside the new command's output.
  const prepare = asRoot(
    `mkdir -p "$1" && cd "$1" && rm -f exit exit.new finished started start-error stdout stderr`
      + ` && if [ -n "$2" ]; then chown "\${2%%:*}" .; fi && pwd`,
    entrypointDir,
    user
  )
  const prepared = yield* Effect.either(guestRun(handle.value, prepare))
  const startedAt = yield* nowUtc
  yield* store.update(workspace.name, (ws) => ({
    ...ws,
    result: new EntrypointResult({ sessionId, command, status: "running", startedAt })
  } as Workspace))
  yield* store.appendEvent(workspace.name, { type: "entrypoint", detail: `started: ${command}` })
  // The command runs where the image says (its working directory), so it is given the absolute path.
  const launch = (directory: string) =>
    execRequestFor(
      workspace,
      ["/bin/sh", "-c", launchScript, "microagent-entrypoint", directory, command, firstProgram(command)],
      { timeoutSeconds: 30 }
    )
  const launched = prepared._tag === "Right" && prepared.right.exitCode === 0
    ? yield* Effect.either(guestRun(handle.value, launch(prepared.right.stdout.trim())))
    : prepared
  const failure = launched._tag === "Left"
    ? launched.left.message
    : launched.right.status === "failed_to_start"
    ? launched.right.error ?? (launched.right.stderr.trim() || "the command could not be started")
    : launched.right.exitCode !== 0
    ? launched.right.stderr.trim() || `the launcher exited with ${launched.right.exitCode}`
    : undefined
  if (failure !== undefined) {
    const at = yield* nowUtc
    yield* settle(workspace.name, sessionId, (current) => startFailed(current, failure, at))
    yield* store.appendEvent(workspace.name, { type: "entrypoint", detail: `start failed: ${failure}` })
  }
  return yield* store.get(workspace.name)
})

const readOutcome = (
  handle: VmHandle,
  current: EntrypointResult
): Effect.Effect<Option.Option<EntrypointResult>, GuestError, GuestChannel> =>
  Effect.gen(function*() {
    const status: ExecResult = yield* guestRun(handle, asRoot(statusScript, entrypointDir))
    if (status.exitCode === 3) return Option.none()
    const at = yield* nowUtc
    if (status.exitCode !== 0) {
      return Option.some(
        new EntrypointResult({
          ...current,
          status: "lost",
          error: `the guest has no outcome of this entrypoint (${
            status.stderr.trim() || `status ${status.exitCode}`
          })`,
          finishedAt: at
        })
      )
    }
    const [code, started, finished, ...rest] = status.stdout.split("\n")
    const startError = rest.join("\n").trim()
    const startedAt = Option.getOrElse(epochToUtc(started), () => current.startedAt ?? at)
    const finishedAt = Option.getOrElse(epochToUtc(finished), () => at)
    if (startError !== "") {
      return Option.some(new EntrypointResult({ ...startFailed(current, startError, finishedAt), startedAt }))
    }
    const output = yield* guestRun(
      handle,
      new ExecRequest({
        ...asRoot(`cat "$1/stdout"; cat "$1/stderr" >&2`, entrypointDir),
        stdoutLimit: entrypointOutputLimit,
        stderrLimit: entrypointOutputLimit
      })
    )
    const exitCode = Number(code)
    return Option.some(
      new EntrypointResult({
        ...current,
        status: "exited",
        exitCode: Number.isInteger(exitCode) ? exitCode : 255,
        stdout: output.stdout,
        stderr: output.stderr,
        stdoutTruncated: output.stdoutTruncated,
        stderrTruncated: output.stderrTruncated,
        startedAt,
        finishedAt
      })
    )
  })

/**
 * Brings the record's result up to date: a finished entrypoint's outcome is copied from the guest; one
 * whose VM is gone without an outcome becomes `lost`. Returns the workspace as recorded afterwards.
 */
export const collectEntrypoint = Effect.fn("collectEntrypoint")(function*(name: string) {
  const store = yield* StateStore
  const workspace = yield* store.get(name).pipe(Effect.flatMap(reconcile))
  const current = workspace.result
  if (current === undefined || current.status !== "running") return workspace
  const handle = vmHandleOf(workspace)
  if (current.sessionId !== workspace.sessionId || !isLive(workspace.state) || Option.isNone(handle)) {
    const at = yield* nowUtc
    const lost = yield* settle(name, current.sessionId, (r) =>
      new EntrypointResult({
        ...r,
        status: "lost",
        error: "the workspace stopped before its entrypoint finished",
        finishedAt: at
      }))
    if (lost) yield* store.appendEvent(name, { type: "entrypoint", detail: "lost: the VM stopped first" })
    return yield* store.get(name)
  }
  if (workspace.state !== "running") return workspace
  const outcome = yield* readOutcome(handle.value, current).pipe(Effect.mapError(guestFailure(name)))
  if (Option.isNone(outcome)) return workspace
  const applied = yield* settle(name, current.sessionId, () => outcome.value)
  if (applied) {
    yield* store.appendEvent(name, {
      type: "entrypoint",
      detail: outcome.value.status === "exited"
        ? `exited ${outcome.value.exitCode}`
        : `${outcome.value.status}: ${outcome.value.startError ?? outcome.value.error ?? ""}`
    })
  }
  return yield* store.get(name)
})

export interface ResultOptions {
  /** Block until the entrypoint has finished (or its VM stopped). */
  readonly wait?: boolean | undefined
  /** With `wait`: give up after this many seconds (`Transient`). */
  readonly timeoutSeconds?: number | undefined
}

/** The result of the entrypoint of the latest start that ran one. */
export const result = Effect.fn("result")(function*(name: string, options: ResultOptions = {}) {
  const first = yield* collectEntrypoint(name)
  if (first.result === undefined) {
    return yield* new NotFound({
      message: first.entrypoint === undefined
        ? `workspace ${name} has no entrypoint, so no result`
        : `workspace ${name} has not run its entrypoint yet`,
      remediation: first.entrypoint === undefined
        ? "give one at create: microagent create --entrypoint CMD (or `entrypoint:` in the spec)"
        : `start it: microagent start ${name}`
    })
  }
  if (!options.wait || first.result.status !== "running") return first.result
  const finished = collectEntrypoint(name).pipe(
    Effect.filterOrFail((ws) => ws.result?.status !== "running", () => "running" as const),
    Effect.retry({ schedule: Schedule.spaced(Duration.millis(500)), while: (e) => e === "running" }),
    Effect.catchIf((e) => e === "running", () => Effect.die("unreachable"))
  )
  const limit = options.timeoutSeconds === undefined
    ? Duration.infinity
    : Duration.seconds(options.timeoutSeconds)
  const done = yield* finished.pipe(
    Effect.timeoutFail({
      duration: limit,
      onTimeout: () =>
        new Transient({
          message: `the entrypoint of workspace ${name} did not finish within ${Duration.format(limit)}`,
          remediation: `wait longer: microagent result ${name} --wait`,
          retryAfterMs: 1000
        })
    })
  )
  return done.result!
})

/** Whether the current start's entrypoint still runs (what `wait` waits for besides the VM settling). */
export const entrypointRunning = (workspace: Workspace) =>
  workspace.result !== undefined && workspace.result.status === "running"
  && workspace.result.sessionId === workspace.sessionId

/** The workspaces whose entrypoint the record says is still running: the runtime collects them on each pass. */
export const pendingResults = Effect.map(
  Effect.flatMap(StateStore, (store) => store.list),
  (all) => all.filter((ws) => ws.result?.status === "running")
)

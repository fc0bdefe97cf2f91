/**
 * The service: a command the guest keeps running for as long as the VM runs, restarted with back-off
 * (1 s doubling to 30 s, back to 1 s after 30 s up: domain/Supervision.ts) each time it exits.
 *
 * The supervision runs in the guest, not the host: each start launches a small supervisor (a shell
 * loop detached from the exec that launched it, like the entrypoint) that runs the command, waits for
 * it, sleeps its delay and runs it again. The VM keeps its service whatever happens to the host's
 * runtime. Each restart appends a line (exit code, uptime, delay, time) to
 * `/run/microagent/service/restarts.log`; whoever holds the VM's channel (the runtime, every few
 * seconds) copies new lines into the record (`serviceStatus`) and the events.
 */
import { DateTime, Effect, Option } from "effect"
import { Permanent } from "../domain/Errors.ts"
import { ExecRequest } from "../domain/Exec.ts"
import { serviceBackoff } from "../domain/Supervision.ts"
import { ServiceStatus, type Workspace } from "../domain/Workspace.ts"
import { StateStore } from "../services/StateStore.ts"
import { guestRun } from "./Entrypoint.ts"
import { guestFailure } from "./Exec.ts"
import { reconcile, vmHandleOf } from "./internal/Reconcile.ts"
import { execRequestFor } from "./internal/Requests.ts"

/** Where the guest keeps the service's pid, output and restart log (relative to `/`, see entrypointDir). */
export const serviceDir = "run/microagent/service"

/** Bytes of the service's output kept in the guest before it is rotated to `output.1`. */
const outputLimit = 1024 * 1024

const asRoot = (script: string, ...args: Array<string>) =>
  new ExecRequest({
    argv: ["/bin/sh", "-c", script, "microagent", ...args],
    user: "0",
    cwd: "/",
    timeoutSeconds: 30
  })

// $1 the directory, $2 the command, $3 $4 $5 the back-off (initial, max, reset after), $6 output limit.
// The loop's descriptors point at files, so the exec that launched it ends at once; it lives on as a
// child of the guest's init. A line of restarts.log: exit code, seconds up, delay before the restart,
// when it exited (epoch seconds).
export const supervisorScript = `d=$1
: > "$d/restarts.log"
( delay=0
  while :; do
    started=$(date +%s)
    /bin/sh -c "$2" </dev/null >>"$d/output" 2>&1 &
    echo $! > "$d/pid"
    wait $!
    code=$?
    ended=$(date +%s)
    up=$((ended - started))
    if [ "$delay" -eq 0 ] || [ "$up" -ge "$5" ]; then delay=$3
    else delay=$((delay * 2)); if [ "$delay" -gt "$4" ]; then delay=$4; fi
    fi
    if [ "$(wc -c < "$d/output")" -gt "$6" ]; then mv "$d/output" "$d/output.1"; fi
    echo "$code $up $delay $ended" >> "$d/restarts.log"
    sleep "$delay"
  done ) </dev/null >/dev/null 2>&1 &
echo $! > "$d/supervisor"
`

/**
 * Launches the workspace's service in the guest of the current session (after setup and files, before
 * the entrypoint). A service that cannot be launched fails the start: the VM would run without it.
 */
export const launchService = Effect.fn("launchService")(function*(workspace: Workspace) {
  const store = yield* StateStore
  const command = workspace.service
  const handle = vmHandleOf(workspace)
  if (command === undefined || workspace.sessionId === undefined || Option.isNone(handle)) return workspace
  const user = workspace.image.user ?? ""
  // Made as root (the image's user may not write to /run), then given to that user. A directory left
  // by an earlier boot (only the fake backend's "guest" keeps /run) starts afresh.
  const prepared = yield* guestRun(
    handle.value,
    asRoot(
      `rm -rf "$1" && mkdir -p "$1" && if [ -n "$2" ]; then chown "\${2%%:*}" "$1"; fi && cd "$1" && pwd`,
      serviceDir,
      user
    )
  ).pipe(Effect.mapError(guestFailure(workspace.name)))
  const launched = prepared.exitCode === 0
    ? yield* guestRun(
      handle.value,
      execRequestFor(
        workspace,
        [
          "/bin/sh",
          "-c",
          supervisorScript,
          "microagent-service",
          prepared.stdout.trim(),
          command,
          String(serviceBackoff.initialSeconds),
          String(serviceBackoff.maxSeconds),
          String(serviceBackoff.resetAfterSeconds),
          String(outputLimit)
        ],
        { timeoutSeconds: 30 }
      )
    ).pipe(Effect.mapError(guestFailure(workspace.name)))
    : prepared
  if (launched.status !== "exited" || launched.exitCode !== 0) {
    const why = launched.error ?? (launched.stderr.trim() || `exit ${launched.exitCode}`)
    yield* store.appendEvent(workspace.name, { type: "service", detail: `start failed: ${why}` })
    return yield* new Permanent({
      message: `workspace ${workspace.name}: the service could not be launched: ${why}`,
      remediation: "check the service command and that the image has /bin/sh"
    })
  }
  yield* store.appendEvent(workspace.name, { type: "service", detail: `started: ${command}` })
  return yield* store.update(workspace.name, (ws) => ({
    ...ws,
    serviceStatus: new ServiceStatus({ sessionId: workspace.sessionId!, restarts: 0 })
  } as Workspace))
})

/** One line of restarts.log, or undefined when it is not one. */
export const parseRestart = (line: string) => {
  const fields = line.trim().split(/\s+/).map(Number)
  if (fields.length !== 4 || fields.some((n) => !Number.isInteger(n) || n < 0)) return undefined
  const [exitCode, uptimeSeconds, delaySeconds, exitedAt] = fields as [number, number, number, number]
  return { exitCode, uptimeSeconds, delaySeconds, exitedAt }
}

/**
 * Copies the restarts the guest logged since the last look into the record and the events. Answers
 * the workspace as recorded afterwards.
 */
export const collectService = Effect.fn("collectService")(function*(name: string) {
  const store = yield* StateStore
  const workspace = yield* store.get(name).pipe(Effect.flatMap(reconcile))
  const status = workspace.serviceStatus
  const handle = vmHandleOf(workspace)
  if (
    workspace.state !== "running" || status === undefined || status.sessionId !== workspace.sessionId
    || Option.isNone(handle)
  ) return workspace
  const read = yield* guestRun(
    handle.value,
    asRoot(`tail -n +"$2" "$1/restarts.log"`, serviceDir, String(status.restarts + 1))
  ).pipe(Effect.mapError(guestFailure(name)))
  const restarts = read.exitCode === 0
    ? read.stdout.split("\n").map(parseRestart).filter((r) => r !== undefined)
    : []
  if (restarts.length === 0) return workspace
  let applied = false
  const updated = yield* store.update(name, (ws) => {
    applied = ws.serviceStatus !== undefined && ws.serviceStatus.sessionId === status.sessionId
      && ws.serviceStatus.restarts === status.restarts
    if (!applied) return ws
    const last = restarts.at(-1)!
    return {
      ...ws,
      serviceStatus: new ServiceStatus({
        sessionId: status.sessionId,
        restarts: status.restarts + restarts.length,
        lastExitCode: last.exitCode,
        lastDelaySeconds: last.delaySeconds,
        lastRestartAt: DateTime.unsafeMake((last.exitedAt + last.delaySeconds) * 1000)
      })
    } as Workspace
  })
  if (!applied) return updated
  for (const [index, restart] of restarts.entries()) {
    yield* store.appendEvent(name, {
      type: "service",
      detail: `exited ${restart.exitCode} after ${restart.uptimeSeconds}s; restart ${
        status.restarts + index + 1
      } in ${restart.delaySeconds}s`
    })
  }
  return updated
})

/** The running workspaces whose service the runtime looks at on its passes. */
export const supervisedServices = Effect.map(
  Effect.flatMap(StateStore, (store) => store.list),
  (all) => all.filter((ws) => ws.state === "running" && ws.serviceStatus !== undefined)
)

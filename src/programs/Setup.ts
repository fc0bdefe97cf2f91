/**
 * Setup: the workspace's setup commands, run once, in order, before the entrypoint of the first start
 * that gets through them. Success is recorded (`setupDone`); a failing step leaves setup pending, so
 * the next start runs it all again, and fails this start with the step's output. Each step's outcome
 * and output are in the events.
 */
import { DateTime, Effect, Option } from "effect"
import { Permanent } from "../domain/Errors.ts"
import type { Workspace } from "../domain/Workspace.ts"
import { StateStore } from "../services/StateStore.ts"
import { guestRun } from "./Entrypoint.ts"
import { guestFailure } from "./Exec.ts"
import { vmHandleOf } from "./internal/Reconcile.ts"
import { execRequestFor } from "./internal/Requests.ts"

/** Bytes of each step's output kept in its event. */
const eventOutputLimit = 16 * 1024

const tail = (text: string) => text.length > eventOutputLimit ? `…${text.slice(-eventOutputLimit)}` : text

/** Runs pending setup in the running workspace; answers the workspace as recorded afterwards. */
export const runSetup = Effect.fn("runSetup")(function*(workspace: Workspace) {
  const store = yield* StateStore
  const handle = vmHandleOf(workspace)
  if (workspace.setup.length === 0 || workspace.setupDone !== undefined || Option.isNone(handle)) {
    return workspace
  }
  const total = workspace.setup.length
  for (const [index, command] of workspace.setup.entries()) {
    const step = `setup ${index + 1}/${total}`
    const outcome = yield* guestRun(
      handle.value,
      execRequestFor(workspace, ["/bin/sh", "-c", command], { timeoutSeconds: 3600 })
    ).pipe(Effect.mapError(guestFailure(workspace.name)))
    const output = tail(`${outcome.stdout}${outcome.stderr}`).trimEnd()
    const failed = outcome.status !== "exited" || outcome.exitCode !== 0
    yield* store.appendEvent(workspace.name, {
      type: "setup",
      detail: `${step} ${failed ? `failed (${outcome.status} ${outcome.exitCode})` : "ok"}: ${command}${
        output === "" ? "" : `\n${output}`
      }`
    })
    if (failed) {
      return yield* new Permanent({
        message:
          `workspace ${workspace.name}: ${step} failed (${outcome.status} ${outcome.exitCode}): ${command}${
            output === "" ? "" : `\n${output}`
          }`,
        remediation: `setup stays pending: fix the cause and start again (microagent start ${workspace.name})`
      })
    }
  }
  const done = yield* DateTime.now
  return yield* store.update(workspace.name, (ws) => ({ ...ws, setupDone: done }) as Workspace)
})

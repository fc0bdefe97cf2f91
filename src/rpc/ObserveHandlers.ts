/** The RPC handlers that look at workspaces: inspect, list, logs, egress, events, wait, result, stats and perf. */
import { Duration, Effect } from "effect"
import { isLive } from "../domain/State.ts"
import {
  streamWithWorkspaceBackend,
  withBackend,
  withWorkspaceBackend
} from "../layers/backends/WorkspaceBackends.ts"
import { egressLog } from "../programs/EgressLog.ts"
import { result } from "../programs/Entrypoint.ts"
import { events, inspect, logs, wait } from "../programs/Observe.ts"
import { perfBoot, perfFootprint } from "../programs/Perf.ts"
import { stats } from "../programs/Stats.ts"
import { StateStore } from "../services/StateStore.ts"
import type { HandlersFor, Local, LocalStream } from "./HandlerContext.ts"

export const makeObserveHandlers = (
  local: Local,
  localStream: LocalStream
): HandlersFor<
  | "inspect"
  | "list"
  | "logs"
  | "egress"
  | "events"
  | "wait"
  | "result"
  | "stats"
  | "perfBoot"
  | "perfFootprint"
> => ({
  inspect: (p) => local(withWorkspaceBackend(p.name, inspect(p.name))),
  list: (p) =>
    local(Effect.gen(function*() {
      const all = yield* Effect.flatMap(StateStore, (store) => store.list)
      // Each workspace is reconciled against its own backend; one this build lacks is reported as recorded.
      const found = yield* Effect.forEach(all, (workspace) =>
        withBackend(workspace.backend, inspect(workspace.name)).pipe(
          Effect.map((report) => [report.workspace]),
          Effect.catchTag("NotFound", () =>
            Effect.succeed([])),
          Effect.catchTag("Unsupported", () => Effect.succeed([workspace]))
        ))
      return found.flat().filter((workspace) =>
        !p.runningOnly || isLive(workspace.state)
      )
    })),
  logs: (p) => localStream(streamWithWorkspaceBackend(p.name, logs(p.name, { follow: p.follow ?? false }))),
  egress: (p) =>
    localStream(streamWithWorkspaceBackend(p.name, egressLog(p.name, { follow: p.follow ?? false }))),
  events: (p) =>
    localStream(streamWithWorkspaceBackend(p.name, events(p.name, { follow: p.follow ?? false }))),
  wait: (p) =>
    local(withWorkspaceBackend(
      p.name,
      wait(p.name, {
        ...(p.timeoutSeconds === undefined ? {} : { timeout: Duration.seconds(p.timeoutSeconds) }),
        ...(p.intervalSeconds === undefined ? {} : { interval: Duration.seconds(p.intervalSeconds) })
      })
    )),
  result: (p) =>
    local(withWorkspaceBackend(p.name, result(p.name, { wait: p.wait, timeoutSeconds: p.timeoutSeconds }))),
  stats: (p) =>
    local(withWorkspaceBackend(
      p.name,
      stats(
        p.name,
        p.intervalSeconds === undefined ? {} : { interval: Duration.seconds(p.intervalSeconds) }
      )
    )),
  perfBoot: (p) => local(withBackend(p.backend, perfBoot(p))),
  perfFootprint: (p) =>
    local(
      p.name === undefined
        ? withBackend(undefined, perfFootprint())
        : withWorkspaceBackend(p.name, perfFootprint(p.name))
    )
})

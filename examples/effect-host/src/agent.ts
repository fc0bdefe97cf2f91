import { Effect } from "effect"
import { create, defaultImage, exec, ExecRequest, remove, start } from "microagent"

/**
 * A running workspace that is deleted (its VM killed first) when the scope closes, however it closes.
 * Only the creation is the acquisition: booting stays interruptible, and a failed boot is deleted too.
 */
const workspace = (image: string, name: string) =>
  Effect.acquireRelease(
    create({ image, name }),
    (ws) => remove(ws.name, { force: true }).pipe(Effect.ignore)
  ).pipe(Effect.tap((ws) => start(ws.name)))

/** The application's step: boot a workspace, run a command in it, return what it printed. */
export const agentStep = Effect.scoped(Effect.gen(function*() {
  const ws = yield* workspace(defaultImage, "agent-1") // the built-in busybox image; any OCI reference works
  const result = yield* exec(ws.name, new ExecRequest({ argv: ["sh", "-c", "echo hello from $0"] }))
  return result.stdout
}))

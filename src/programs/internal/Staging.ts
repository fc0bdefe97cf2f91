/**
 * Staging directories (`workspaces/.staging-…`) carry the pid and start time of the process that
 * made them, so `gc` can tell a create still under way from one whose process died (kill -9 leaves
 * no finalizer to remove its staging) and remove the latter at once.
 */
import { Effect } from "effect"
import { Processes, type ProcessIdentity } from "../../services/Processes.ts"

/** The name of a staging directory made by `owner` (this process: `Processes.self`). */
export const stagingName = (owner: ProcessIdentity, unique: string): string =>
  `.staging-${owner.pid}-${owner.startTime ?? "0"}-${unique}`

/** Whether the process that made this staging directory may still be using it. */
export const stagingInUse = (name: string): Effect.Effect<boolean, never, Processes> => {
  const owner = /^\.staging-(\d+)-(\d+)-/.exec(name)
  // A name without an owner (made by an older version): only its age tells.
  if (owner === null) return Effect.succeed(true)
  return Effect.flatMap(
    Processes,
    (processes) => processes.isAlive(Number(owner[1]), owner[2] === "0" ? undefined : owner[2])
  )
}

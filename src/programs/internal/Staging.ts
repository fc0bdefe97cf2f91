/**
 * Staging directories (`workspaces/.staging-…`) carry the pid and start time of the process that
 * made them, so `gc` can tell a create still under way from one whose process died (kill -9 leaves
 * no finalizer to remove its staging) and remove the latter at once.
 */
import { isAlive, startTimeOf } from "../../layers/process/Processes.ts"

export const stagingName = (unique: string): string =>
  `.staging-${process.pid}-${startTimeOf(process.pid) ?? "0"}-${unique}`

/** Whether the process that made this staging directory may still be using it. */
export const stagingInUse = (name: string): boolean => {
  const owner = /^\.staging-(\d+)-(\d+)-/.exec(name)
  // A name without an owner (made by an older version): only its age tells.
  if (owner === null) return true
  return isAlive(Number(owner[1]), owner[2] === "0" ? undefined : owner[2])
}

/**
 * Where warm-start templates and their builds live, shared by the template program and the orphan
 * reaper (which must leave a template VM alone while its build runs).
 */
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { isAlive } from "../../layers/process/Processes.ts"

export const templatesDir = (root: string) => NodePath.join(root, "templates")

/** The runtime directory name of a template build's VM (no workspace name starts with a dot). */
export const templateRuntimeName = (key: string) => `.template-${key.slice(0, 12)}`

/** The build lock of a template. */
export const templateLock = (root: string, key: string) => NodePath.join(templatesDir(root), `${key}.lock`)

/** Whether a live process holds the build lock of the template whose VM runs under `runtimeName`. */
export const templateBuildRunning = (root: string, runtimeName: string): boolean => {
  const prefix = runtimeName.startsWith(".template-") ? runtimeName.slice(".template-".length) : undefined
  if (prefix === undefined) return false
  let entries: Array<string> = []
  try {
    entries = NodeFs.readdirSync(templatesDir(root))
  } catch {
    return false
  }
  return entries.some((entry) => {
    if (!entry.startsWith(prefix) || !entry.endsWith(".lock")) return false
    try {
      const [pid, startTime] = NodeFs.readFileSync(NodePath.join(templatesDir(root), entry), "utf8").split(
        " "
      )
      return isAlive(Number(pid), startTime === "" ? undefined : startTime)
    } catch {
      return false
    }
  })
}

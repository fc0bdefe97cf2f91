/**
 * Where warm-start templates and their builds live, shared by the template program and the orphan
 * reaper (which must leave a template VM alone while its build runs).
 */
import { Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Processes } from "../../services/Processes.ts"

export const templatesDir = (root: string) => NodePath.join(root, "templates")

/** The runtime directory name of a template build's VM (no workspace name starts with a dot). */
export const templateRuntimeName = (key: string) => `.template-${key.slice(0, 12)}`

/** The build lock of a template. */
export const templateLock = (root: string, key: string) => NodePath.join(templatesDir(root), `${key}.lock`)

/** Whether a live process holds the build lock of the template whose VM runs under `runtimeName`. */
export const templateBuildRunning = (root: string, runtimeName: string) =>
  Effect.gen(function*() {
    const prefix = runtimeName.startsWith(".template-") ? runtimeName.slice(".template-".length) : undefined
    if (prefix === undefined) return false
    let entries: Array<string> = []
    try {
      entries = NodeFs.readdirSync(templatesDir(root))
    } catch {
      return false
    }
    const processes = yield* Processes
    for (const entry of entries) {
      if (!entry.startsWith(prefix) || !entry.endsWith(".lock")) continue
      let holder: Array<string>
      try {
        holder = NodeFs.readFileSync(NodePath.join(templatesDir(root), entry), "utf8").split(" ")
      } catch {
        continue
      }
      const [pid, startTime] = holder
      if (yield* processes.isAlive(Number(pid), startTime === "" ? undefined : startTime)) return true
    }
    return false
  })

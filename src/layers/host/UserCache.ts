/**
 * The user's own cache directory for what every state directory may reuse: V8's code cache of the
 * CLI (src/layers/process/CodeCache.ts) and the distribution's kernel (src/layers/kernel/internal/
 * shared.ts). `$XDG_CACHE_HOME/microagent`, else `~/.cache/microagent`, made 0700; a directory (or a
 * file in it) is used only when it belongs to the user and no one else may write it.
 *
 * Imports nothing but node built-ins: the CLI's first stage bundles this file.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"

/** Owned by this user and writable by no one else. */
export const trusted = (stat: NodeFs.Stats): boolean =>
  (process.getuid === undefined || stat.uid === process.getuid()) && (stat.mode & 0o022) === 0

/** A private directory, created if missing (each level 0700); undefined when it cannot be trusted. */
export const privateDirectory = (dir: string): string | undefined => {
  if (!NodePath.isAbsolute(dir)) return undefined
  try {
    NodeFs.mkdirSync(dir, { recursive: true, mode: 0o700 })
    return trusted(NodeFs.statSync(dir)) ? dir : undefined
  } catch {
    return undefined
  }
}

/** `<user cache>/microagent[/sub]`, created if missing; undefined when there is none to trust. */
export const userCacheDirectory = (sub?: string): string | undefined => {
  const base = process.env.XDG_CACHE_HOME || NodePath.join(process.env.HOME || NodeOs.homedir(), ".cache")
  if (!NodePath.isAbsolute(base)) return undefined
  const dir = privateDirectory(NodePath.join(base, "microagent"))
  return dir === undefined || sub === undefined ? dir : privateDirectory(NodePath.join(dir, sub))
}

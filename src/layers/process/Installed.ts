/**
 * Where the files microagent ships beside its code are found (the guest agent, the egress mediator, the
 * model runner), and host commands on the PATH: a shipped file is a path relative to this module's directory or to one of its ancestors, which covers
 * the source tree, the bundles in bin/ and the compiled library in an installed package's dist/.
 */
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import * as NodeUrl from "node:url"

/** `relatives` under this module's directory and each ancestor (8 levels at most), nearest first. */
export const besideAncestors = (relatives: ReadonlyArray<string>): Array<string> => {
  const out: Array<string> = []
  let dir = NodePath.dirname(NodeUrl.fileURLToPath(import.meta.url))
  for (let i = 0; i < 8; i++) {
    for (const relative of relatives) out.push(NodePath.join(dir, relative))
    const parent = NodePath.dirname(dir)
    if (parent === dir) break
    dir = parent
  }
  return out
}

/** The path `$variable` names when it is set, else the nearest existing one of `relatives`. */
export const installedFile = (variable: string, relatives: ReadonlyArray<string>): string | undefined => {
  const explicit = process.env[variable]
  if (explicit !== undefined && explicit !== "") return NodePath.resolve(explicit)
  return besideAncestors(relatives).find((path) => NodeFs.existsSync(path))
}

/** The first executable `command` on the PATH (then /usr/sbin and /sbin), if any. */
export const onPath = (command: string): string | undefined => {
  for (const dir of (process.env.PATH ?? "/usr/bin:/bin").split(":").concat(["/usr/sbin", "/sbin"])) {
    if (dir === "") continue
    const path = NodePath.join(dir, command)
    try {
      NodeFs.accessSync(path, NodeFs.constants.X_OK)
      return path
    } catch {
      // Not here.
    }
  }
  return undefined
}

/**
 * Where the guest agent binary (the initramfs's /init) is found when no explicit path is given:
 * `$MICROAGENT_AGENT`, then `guest/build/microagent-agent` or `libexec/microagent-agent` in an
 * ancestor of this module (the source tree or the bundled package).
 */
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import * as NodeUrl from "node:url"

export const agentCandidates = (): ReadonlyArray<string> => {
  const out: Array<string> = []
  if (process.env.MICROAGENT_AGENT !== undefined && process.env.MICROAGENT_AGENT !== "") {
    out.push(NodePath.resolve(process.env.MICROAGENT_AGENT))
  }
  let dir = NodePath.dirname(NodeUrl.fileURLToPath(import.meta.url))
  for (let i = 0; i < 8; i++) {
    out.push(
      NodePath.join(dir, "guest/build/microagent-agent"),
      NodePath.join(dir, "libexec/microagent-agent")
    )
    const parent = NodePath.dirname(dir)
    if (parent === dir) break
    dir = parent
  }
  return out
}

export const findAgent = (explicit: string | undefined): string | undefined =>
  explicit !== undefined ? explicit : agentCandidates().find((path) => NodeFs.existsSync(path))

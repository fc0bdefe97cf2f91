/**
 * Where the guest agent binary (the initramfs's /init) is found when no explicit path is given:
 * `$MICROAGENT_AGENT`, then `guest/build/microagent-agent` or `libexec/microagent-agent` in an
 * ancestor of this module (the source tree or the bundled package).
 */
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { besideAncestors } from "../../process/Installed.ts"

const agentCandidates = (): ReadonlyArray<string> => {
  const explicit = process.env.MICROAGENT_AGENT
  return [
    ...(explicit !== undefined && explicit !== "" ? [NodePath.resolve(explicit)] : []),
    ...besideAncestors(["guest/build/microagent-agent", "libexec/microagent-agent"])
  ]
}

export const findAgent = (explicit: string | undefined): string | undefined =>
  explicit !== undefined ? explicit : agentCandidates().find((path) => NodeFs.existsSync(path))

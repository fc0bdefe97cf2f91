/**
 * The fake guest's processes: every command the fake channel runs leads its own process group, and
 * what it leaves running in the background (an entrypoint, a service's supervisor) stays in that
 * group. The groups are listed beside the fake guest's root so that killing or halting the fake VM
 * ends them, as powering off a real VM ends everything in it, whichever process launched them.
 */
import * as NodeFs from "node:fs"

const listOf = (root: string) => `${root}.fake-pgids`

const alive = (pgid: number) => {
  try {
    process.kill(-pgid, 0)
    return true
  } catch {
    return false
  }
}

const read = (root: string): Array<number> => {
  try {
    return NodeFs.readFileSync(listOf(root), "utf8").split("\n").map(Number).filter((n) =>
      Number.isInteger(n) && n > 1
    )
  } catch {
    return []
  }
}

/** Records a process group of the fake guest rooted at `root` (groups already gone are dropped). */
export const rememberGroup = (root: string, pgid: number) => {
  const groups = [...read(root).filter(alive), pgid]
  NodeFs.writeFileSync(listOf(root), `${[...new Set(groups)].join("\n")}\n`, { mode: 0o600 })
}

/** Ends every process group of the fake guest rooted at `root`. */
export const endGroups = (root: string) => {
  for (const pgid of read(root)) {
    try {
      process.kill(-pgid, "SIGKILL")
    } catch {
      // Gone already.
    }
  }
  NodeFs.rmSync(listOf(root), { force: true })
}

/**
 * Offline operations on a stopped workspace's disk (`cp` to or from it, `commit`) hold it through a
 * claim file, `<workspace dir>/disk.claim`, created exclusively and naming the holder's pid, so that two
 * of them never read and write the same disk at once, whichever process (runtime, library, CLI) runs
 * them. A claim whose process is gone is taken over; a live one makes the second operation a `conflict`.
 * `start` holds the claim too, while it moves the record to `starting`: an offline operation that claims
 * the disk and then still finds the workspace stopped cannot have a VM boot the disk under it.
 * `claimStoppedDisk` also flattens a copy-on-write overlay (DiskOverlay.ts) into a raw disk first.
 */
import { Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Conflict } from "../../domain/Errors.ts"
import { transitions } from "../../domain/State.ts"
import { Home } from "../../services/Home.ts"
import { Processes } from "../../services/Processes.ts"
import { StateStore } from "../../services/StateStore.ts"
import { flattenDisk } from "./DiskOverlay.ts"

const holderOf = (file: string): { readonly pid: number; readonly what: string } | undefined => {
  try {
    const [pid, ...what] = NodeFs.readFileSync(file, "utf8").trim().split(" ")
    return { pid: Number(pid), what: what.join(" ") }
  } catch {
    return undefined
  }
}

/** Holds workspace `name`'s disk for the scope; `what` names the operation for whoever finds it held. */
export const claimDisk = (name: string, what: string) =>
  Effect.flatMap(Effect.all([Home, Processes]), ([home, processes]) =>
    Effect.acquireRelease(
      Effect.gen(function*() {
        const file = NodePath.join(home.workspaceDir(name), "disk.claim")
        for (let attempt = 0; attempt < 2; attempt++) {
          try {
            NodeFs.writeFileSync(file, `${process.pid} ${what}\n`, { flag: "wx", mode: 0o600 })
            return file
          } catch (cause) {
            if ((cause as NodeJS.ErrnoException).code !== "EEXIST") {
              // No workspace directory (a fake backend's, say): nothing to hold.
              return undefined
            }
          }
          const holder = holderOf(file)
          if (holder !== undefined && holder.pid !== process.pid && (yield* processes.isAlive(holder.pid))) {
            return yield* new Conflict({
              message:
                `workspace ${name}'s disk is held by another operation (${holder.what}, pid ${holder.pid})`,
              remediation: "retry once it has finished"
            })
          }
          if (holder !== undefined && holder.pid === process.pid) {
            return yield* new Conflict({
              message: `workspace ${name}'s disk is held by another operation (${holder.what})`,
              remediation: "retry once it has finished"
            })
          }
          NodeFs.rmSync(file, { force: true })
        }
        return yield* new Conflict({
          message: `workspace ${name}'s disk could not be claimed`,
          remediation: "retry"
        })
      }),
      (file) => Effect.sync(() => file !== undefined && NodeFs.rmSync(file, { force: true }))
    ))

/** The states whose disk no VM uses: those a start may leave. */
export const offlineStates = transitions.start.from

/**
 * Holds a stopped workspace's disk for the scope, then reads its record again: a start that moved it on
 * between the caller's first look and the claim makes this a `conflict`, and nothing touched the disk.
 */
export const claimStoppedDisk = (name: string, what: string) =>
  Effect.gen(function*() {
    yield* claimDisk(name, what)
    const workspace = yield* Effect.flatMap(StateStore, (store) => store.get(name))
    if (!offlineStates.includes(workspace.state)) {
      return yield* new Conflict({
        message:
          `workspace ${name} is ${workspace.state} now; ${what} works only on a stopped workspace's disk`,
        remediation: `halt it first (microagent halt ${name}), then retry`
      })
    }
    // The host's tools read and write raw ext4: a copy-on-write overlay becomes the workspace's own disk.
    yield* flattenDisk(workspace.rootfsPath)
  })

/**
 * A complete fast-tier environment: a fresh temporary state directory, the real SQLite store, and the
 * fake backend. The directory is removed, and any fake VMM killed, when the scope closes.
 */
import { Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import * as Microagent from "../../src/Microagent.ts"

export const makeTempDir = (prefix: string) =>
  Effect.acquireRelease(
    Effect.sync(() => NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), `${prefix}-`))),
    (dir) => Effect.sync(() => NodeFs.rmSync(dir, { recursive: true, force: true }))
  )

/** Kills every fake VMM (a `sleep` process) recorded under `root`, so tests leave no process behind. */
export const killFakeVmms = (root: string) =>
  Effect.sync(() => {
    const dbPath = NodePath.join(root, "state.db")
    if (!NodeFs.existsSync(dbPath)) return
    const text = NodeFs.readFileSync(dbPath).toString("latin1")
    for (const match of text.matchAll(/"pid":(\d+)/g)) {
      const pid = Number(match[1])
      try {
        // Only the fake VMMs: the store also names owner processes, this test process among them.
        if (NodeFs.readFileSync(`/proc/${pid}/cmdline`, "utf8") === "sleep\u00002147483647\u0000") {
          process.kill(pid, "SIGKILL")
        }
      } catch {
        // Gone already.
      }
    }
  })

/** The library's own test composition (src/Microagent.ts): fake backend, temporary state directory. */
export const fakeEnvironment = Microagent.layerTest()

/**
 * The runtime process's entry (bundled alone as bin/microagent-runtime.mjs, started by the launcher):
 * `--state-dir DIR [--idle-seconds N]`, the backend from MICROAGENT_BACKEND. It loads only what the
 * runtime serves, which keeps its resident memory well below the full CLI's.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Effect } from "effect"
import { Home } from "../services/Home.ts"
import { runRuntime } from "./RuntimeMain.ts"

// Everything the runtime writes under the state directory is private to the user.
process.umask(0o077)

const flag = (name: string) => {
  const args = process.argv.slice(2)
  const at = args.indexOf(name)
  return at >= 0 ? args[at + 1] : undefined
}

const idle = Number(flag("--idle-seconds"))

NodeRuntime.runMain(
  Effect.suspend(() =>
    runRuntime(Home.resolveRoot(flag("--state-dir")), {
      idleSeconds: Number.isFinite(idle) && idle > 0 ? idle : undefined
    })
  ),
  { disableErrorReporting: false, disablePrettyLogger: true }
)

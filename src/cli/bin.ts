/**
 * The `microagent` executable.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Effect } from "effect"
import { main } from "./Main.ts"

// Everything the CLI writes under the state directory is private to the user.
process.umask(0o077)

NodeRuntime.runMain(
  main(process.argv.slice(2)).pipe(Effect.flatMap((code) => Effect.sync(() => {
    process.exitCode = code
  }))),
  { disableErrorReporting: true, disablePrettyLogger: true }
)

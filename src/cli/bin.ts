/**
 * The `microagent` CLI proper (loaded by the first stage, entry.ts).
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Exit } from "effect"
import { main } from "./Main.ts"
import { watchPipes } from "./Output.ts"

// Everything the CLI writes under the state directory is private to the user.
process.umask(0o077)
watchPipes()

NodeRuntime.runMain(main(process.argv.slice(2)), {
  disableErrorReporting: true,
  disablePrettyLogger: true,
  // Ctrl-C interrupts the command (its scopes tear down what it started) and exits 130, as shells expect.
  teardown: (exit, onExit) => onExit(Exit.isSuccess(exit) ? Number(exit.value) : 130)
})

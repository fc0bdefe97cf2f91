/**
 * The `microagent` executable's first stage: answers `--version` without loading anything, runs a
 * plain `exec` against a running runtime over the socket (src/cli/fast), and otherwise runs the CLI
 * with V8's code cache (src/layers/process/CodeCache.ts).
 * Keeping this file free of anything but node built-ins keeps start-up at node's own cost.
 */
import { fileURLToPath } from "node:url"
import { runBundle } from "../layers/process/CodeCache.ts"
import { fastPath } from "./fast/FastPath.ts"

const args = process.argv.slice(2)

const loadCli = () => runBundle(fileURLToPath(new URL("./microagent-main.cjs", import.meta.url)))

if (args.length === 1 && (args[0] === "--version" || args[0] === "-v" || args[0] === "version")) {
  process.stdout.write(`${process.env.MICROAGENT_BUILD_VERSION ?? "0.0.0+local"}\n`)
} else if ((args.includes("exec") || args.includes("run")) && process.env.MICROAGENT_NO_FAST_PATH !== "1") {
  const code = await fastPath(args)
  if (code === undefined) loadCli()
  else process.exitCode = code
} else {
  loadCli()
}

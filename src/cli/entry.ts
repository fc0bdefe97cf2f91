/**
 * The `microagent` executable's first stage: answers `--version` without loading anything, runs a
 * plain `exec` against a running runtime over the socket (src/cli/fast), and otherwise loads the CLI.
 * Keeping this file free of anything but node built-ins keeps start-up at node's own cost.
 */
import { fastPath } from "./fast/FastPath.ts"

const args = process.argv.slice(2)

const loadCli = () => import(new URL("./microagent-main.mjs", import.meta.url).href)

if (args.length === 1 && (args[0] === "--version" || args[0] === "-v" || args[0] === "version")) {
  process.stdout.write(`${process.env.MICROAGENT_BUILD_VERSION ?? "0.0.0+local"}\n`)
} else if ((args.includes("exec") || args.includes("run")) && process.env.MICROAGENT_NO_FAST_PATH !== "1") {
  const code = await fastPath(args)
  if (code === undefined) await loadCli()
  else process.exitCode = code
} else {
  await loadCli()
}

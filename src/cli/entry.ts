/**
 * The `microagent` executable's first stage: answers `--version` without loading anything, and
 * otherwise loads the CLI. Keeping this file free of imports keeps start-up at node's own cost.
 */
const args = process.argv.slice(2)

if (args.length === 1 && (args[0] === "--version" || args[0] === "-v" || args[0] === "version")) {
  process.stdout.write(`${process.env.MICROAGENT_BUILD_VERSION ?? "0.0.0+local"}\n`)
} else {
  await import(new URL("./microagent-main.mjs", import.meta.url).href)
}

export {}

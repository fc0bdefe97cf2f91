/**
 * The command tree and the top-level flow of the CLI: split the command line, print grouped help,
 * run the command with @effect/cli, and turn failures into a message and an exit code
 * (0 ok, 1 failed, 2 usage, 75 retryable; `run` and `exec` pass the guest's exit code through).
 */
import { CliConfig, Command, CommandDescriptor, HelpDoc, ValidationError } from "@effect/cli"
import * as NodeContext from "@effect/platform-node/NodeContext"
import { Cause, Effect, Either, HashMap, HashSet, Option } from "effect"
import { ExitCode, exitCodeFor, isMicroagentError } from "../domain/Errors.ts"
import { version } from "../Version.ts"
import { parseArgv } from "./Argv.ts"
import { artifactsGroup } from "./artifacts.ts"
import { connectCommand } from "./connect.ts"
import { cpGroup } from "./cp.ts"
import { hostGroup, runtimeGroup } from "./HostCommands.ts"
import { imageCommand } from "./image.ts"
import { Invocation } from "./Invocation.ts"
import { kernelCommand } from "./kernel.ts"
import { lifecycleGroup, maintenanceGroup } from "./LifecycleCommands.ts"
import { networkCommand } from "./network.ts"
import { renderError, wantsJson } from "./Output.ts"
import { perfCommand } from "./perf.ts"
import { runGroup } from "./RunCommands.ts"
import { secretCommand } from "./secret.ts"
import { serve } from "./ServeCommands.ts"
import { stateCommand } from "./state.ts"
import { verbs } from "./Verbs.ts"
import { volumeCommand } from "./volume.ts"

export const subcommands = [
  ...hostGroup,
  ...runGroup,
  connectCommand,
  ...lifecycleGroup,
  ...cpGroup,
  ...artifactsGroup,
  imageCommand,
  kernelCommand,
  volumeCommand,
  secretCommand,
  networkCommand,
  perfCommand,
  stateCommand,
  ...maintenanceGroup,
  ...runtimeGroup,
  serve
] as const

export const rootCommand = Command.make("microagent").pipe(
  Command.withDescription("AI-agent workspaces in microVMs"),
  Command.withSubcommands(subcommands)
)

const groups = ["Getting started", "Run", "Lifecycle", "Observe", "Resources", "Maintenance", "Misc"] as const

export const topLevelHelp = (): string => {
  const lines = [
    `microagent ${version} — AI-agent workspaces in microVMs, booted from OCI images`,
    "",
    "Usage: microagent [global flags] COMMAND [flags] [args]",
    ""
  ]
  for (const group of groups) {
    lines.push(`${group}:`)
    for (const verb of verbs.filter((v) => v.group === group)) {
      const aliases = verb.aliases?.length ? ` (alias: ${verb.aliases.join(", ")})` : ""
      lines.push(`  ${verb.name.padEnd(10)} ${verb.summary}${aliases}`)
    }
    lines.push("")
  }
  lines.push(
    "Global flags (before or after the command):",
    "  --json, --output json|text   output format (default: text on a terminal, JSON otherwise)",
    "  --state-dir DIR              state directory (default: $MICROAGENT_HOME or ~/.microagent)",
    "  --backend qemu|fake          backend for new workspaces (default: $MICROAGENT_BACKEND or qemu)",
    "  --no-color                   no colour",
    "",
    "`microagent help COMMAND` or `microagent COMMAND --help` shows a command's flags."
  )
  return `${lines.join("\n")}\n`
}

/** Help without @effect/cli's built-in options and type hints: only what the command itself takes. */
const cliConfig = CliConfig.make({ showBuiltIns: false, showTypes: false })

const stripAnsi = (text: string) => text.replace(new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, "g"), "")

/** A command's own help: its usage, flags and arguments; plain text unless on a colour terminal. */
export const commandHelp = (verb: string, color: boolean, subcommand?: string): string => {
  // The commands differ in their handlers' types; only their descriptors matter here.
  const commands = subcommands as unknown as ReadonlyArray<Command.Command<string, never, never, unknown>>
  const group = commands.find((c) => HashSet.has(Command.getNames(c), verb))
  if (group === undefined) return topLevelHelp()
  const child = subcommand === undefined
    ? undefined
    : Command.getSubcommands(group).pipe(HashMap.get(subcommand), Option.getOrUndefined)
  const usage = child === undefined
    ? verbs.find((v) => v.name === verb)?.usage ?? `microagent ${verb}`
    : `microagent ${verb} ${subcommand} [flags] [args]`
  const text = `Usage: ${usage}\n${
    HelpDoc.toAnsiText(
      child === undefined ? Command.getHelp(group, cliConfig) : CommandDescriptor.getHelp(child, cliConfig)
    )
  }`
  return color ? text : stripAnsi(text)
}

const cli = Command.run(rootCommand, { name: "microagent", version })

/** Runs the CLI on `argv` (without node and script); resolves with the process exit code. */
export const main = (argv: ReadonlyArray<string>): Effect.Effect<number> => {
  const parsed = parseArgv(argv)
  const json = wantsJson(argv.includes("--json") ? true : undefined)
  if (Either.isLeft(parsed)) {
    process.stderr.write(renderError(parsed.left, json))
    return Effect.succeed(ExitCode.usage)
  }
  const request = parsed.right
  if (request._tag === "Version") {
    process.stdout.write(`${version}\n`)
    return Effect.succeed(ExitCode.ok)
  }
  if (request._tag === "Help" && request.topic === undefined) {
    process.stdout.write(topLevelHelp())
    return Effect.succeed(ExitCode.ok)
  }
  if (request._tag === "Help") {
    process.stdout.write(
      commandHelp(request.topic!, process.stdout.isTTY === true && !process.env.NO_COLOR, request.subcommand)
    )
    return Effect.succeed(ExitCode.ok)
  }
  const invocation = request.invocation
  return cli(["node", "microagent", request.verb, ...request.args]).pipe(
    Effect.provideService(Invocation, invocation),
    Effect.provide(CliConfig.layer(cliConfig)),
    Effect.provide(NodeContext.layer),
    Effect.map(() => Number(process.exitCode ?? ExitCode.ok)),
    Effect.catchAllCause((cause) => {
      const failure = Cause.failureOption(cause)
      if (Option.isSome(failure)) {
        const error = failure.value
        if (isMicroagentError(error)) {
          process.stderr.write(renderError(error, wantsJson(invocation.json)))
          return Effect.succeed(exitCodeFor(error))
        }
        if (ValidationError.isValidationError(error)) {
          // @effect/cli has printed the problem already.
          return Effect.succeed(ExitCode.usage)
        }
      }
      if (Cause.isInterruptedOnly(cause)) return Effect.succeed(130)
      process.stderr.write(`microagent: internal error: ${Cause.pretty(cause)}\n`)
      return Effect.succeed(ExitCode.failed)
    })
  )
}

/**
 * The command tree and the top-level flow of the CLI: split the command line, answer help, check the
 * command line against the tree, run the command with @effect/cli, and turn failures into a message
 * and an exit code
 * (0 ok, 1 failed, 2 usage, 75 retryable; `run` and `exec` pass the guest's exit code through).
 */
import { CliConfig, Command, ValidationError } from "@effect/cli"
import * as NodeContext from "@effect/platform-node/NodeContext"
import { Cause, Effect, Either, Option } from "effect"
import { ExitCode, exitCodeFor, InvalidInput, isMicroagentError } from "../domain/Errors.ts"
import { version } from "../domain/Version.ts"
import { applyCommand } from "./apply.ts"
import { parseArgv } from "./Argv.ts"
import { artifactsGroup } from "./artifacts.ts"
import { cloneCommand, forkCommand } from "./clone.ts"
import { checkCommandLine, unknownSubcommand } from "./CommandLine.ts"
import { commitCommand } from "./commit.ts"
import { completionCommand } from "./Completion.ts"
import { connectCommand } from "./connect.ts"
import { cpGroup } from "./cp.ts"
import { type CommandSpec, describeCommand, docText, spellingsOf } from "./Describe.ts"
import { allCommandsHelp, commandHelp, groupHelp, type Style, terminalStyle, topLevelHelp } from "./Help.ts"
import { hostGroup, runtimeGroup } from "./HostCommands.ts"
import { imageCommand } from "./image.ts"
import { initCommand } from "./init.ts"
import { Invocation } from "./Invocation.ts"
import { kernelCommand } from "./kernel.ts"
import { lifecycleGroup, maintenanceGroup } from "./LifecycleCommands.ts"
import { modelCommand } from "./model.ts"
import { networkCommand } from "./network.ts"
import { renderError, stdoutClosed, wantsJson } from "./Output.ts"
import { perfCommand } from "./perf.ts"
import { registryCommand } from "./registry.ts"
import { runGroup } from "./RunCommands.ts"
import { secretCommand } from "./secret.ts"
import { serve } from "./ServeCommands.ts"
import { snapshotCommand } from "./snapshot.ts"
import { stateCommand } from "./state.ts"
import { superviseCommand } from "./supervise.ts"
import { templateCommand } from "./template.ts"
import { usageGroup } from "./usage.ts"
import { volumeCommand } from "./volume.ts"

export const subcommands = [
  ...hostGroup,
  initCommand,
  ...runGroup,
  connectCommand,
  ...lifecycleGroup,
  applyCommand,
  superviseCommand,
  ...usageGroup,
  ...cpGroup,
  commitCommand,
  ...artifactsGroup,
  imageCommand,
  kernelCommand,
  volumeCommand,
  modelCommand,
  snapshotCommand,
  templateCommand,
  cloneCommand,
  forkCommand,
  secretCommand,
  networkCommand,
  registryCommand,
  perfCommand,
  stateCommand,
  ...maintenanceGroup,
  ...runtimeGroup,
  serve,
  // The scripts are generated from this very tree, read when the command runs.
  completionCommand(() => commandSpecs())
] as const

export const rootCommand = Command.make("microagent").pipe(
  Command.withDescription("AI-agent workspaces in microVMs"),
  Command.withSubcommands(subcommands)
)

/** The command tree as data (src/cli/Describe.ts), read once, when first needed. */
let specs: ReadonlyArray<CommandSpec> | undefined
export const commandSpecs = (): ReadonlyArray<CommandSpec> => {
  specs ??= subcommands.map((command) => describeCommand(command))
  return specs
}

const specOf = (verb: string) => commandSpecs().find((spec) => spec.name === verb)

/** A command's flags that take a value, in every spelling: where `run`'s guest argv begins depends on them. */
export const valueFlagsOf = (verb: string): ReadonlyArray<string> =>
  (specOf(verb)?.flags ?? []).filter((flag) => flag.kind !== "bool").flatMap(spellingsOf)

/** The text `microagent help [all | COMMAND [SUBCOMMAND]]` prints, or the usage error it is. */
export const helpFor = (
  topic: string | undefined,
  subcommand: string | undefined,
  style: Style
): Either.Either<string, InvalidInput> => {
  if (topic === undefined) return Either.right(topLevelHelp(version, style))
  if (topic === "all") return Either.right(allCommandsHelp(commandSpecs(), style))
  const spec = specOf(topic)
  if (spec === undefined) return Either.right(topLevelHelp(version, style))
  if (subcommand === undefined || spec.subcommands.length === 0) {
    return Either.right(commandHelp([topic], spec, undefined, style))
  }
  const child = spec.subcommands.find((c) => c.name === subcommand)
  if (child === undefined) return Either.left(unknownSubcommand([topic], spec, subcommand))
  return Either.right(commandHelp([topic, subcommand], child, spec, style))
}

/** @effect/cli's own help is never shown (src/cli/Help.ts writes it); this keeps its built-ins out of parsing. */
const cliConfig = CliConfig.make({ showBuiltIns: false, showTypes: false })

const cli = Command.run(rootCommand, { name: "microagent", version })

/**
 * @effect/cli prints its parse failures with `Console.error`; they are reported as structured errors
 * instead. Loggers write through `console.unsafe`, which stays as it was (the runtime's and serve's logs).
 */
const quietParser = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.flatMap(
    Effect.console,
    (console) => Effect.withConsole(effect, { ...console, error: () => Effect.void, unsafe: console.unsafe })
  )

/** A parse failure the checks of CommandLine.ts let through, as a usage error. */
const fromValidationError = (verb: string, error: ValidationError.ValidationError) =>
  new InvalidInput({
    message: ("error" in error ? docText(error.error as never) : "") || "invalid command line",
    remediation: `\`microagent ${verb} --help\` shows its flags and examples`
  })

const explicitJson = (argv: ReadonlyArray<string>) =>
  argv.includes("--json") || argv.some((word, i) => word === "--output" && argv[i + 1] === "json")
    || argv.includes("--output=json")
    ? true
    : undefined

/** Runs the CLI on `argv` (without node and script); resolves with the process exit code. */
export const main = (argv: ReadonlyArray<string>): Effect.Effect<number> => {
  const parsed = parseArgv(argv, valueFlagsOf)
  const json = wantsJson(explicitJson(argv))
  const usageError = (error: InvalidInput) => {
    process.stderr.write(renderError(error, json))
    return Effect.succeed(ExitCode.usage)
  }
  if (Either.isLeft(parsed)) return usageError(parsed.left)
  const request = parsed.right
  if (request._tag === "Version") {
    // Plain unless JSON is asked for: `v=$(microagent version)` is the common use.
    process.stdout.write(
      (explicitJson(argv) ?? process.env.MICROAGENT_OUTPUT === "json")
        ? `${
          JSON.stringify({ version, node: process.version, platform: `${process.platform}/${process.arch}` })
        }\n`
        : `${version}\n`
    )
    return Effect.succeed(ExitCode.ok)
  }
  if (request._tag === "Help") {
    const noColor = argv.includes("--no-color")
    const text = helpFor(request.topic, request.subcommand, terminalStyle(noColor))
    if (Either.isLeft(text)) return usageError(text.left)
    process.stdout.write(text.right)
    return Effect.succeed(ExitCode.ok)
  }
  const invocation = request.invocation
  const spec = specOf(request.verb)
  if (spec !== undefined) {
    const checked = checkCommandLine([request.verb], spec, request.args)
    if (Either.isLeft(checked)) return usageError(checked.left)
    if (checked.right._tag === "GroupHelp") {
      process.stdout.write(
        groupHelp(checked.right.path, checked.right.spec, terminalStyle(invocation.noColor))
      )
      return Effect.succeed(ExitCode.ok)
    }
  }
  const command = cli(["node", "microagent", request.verb, ...request.args]).pipe(
    quietParser,
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
          process.stderr.write(
            renderError(fromValidationError(request.verb, error), wantsJson(invocation.json))
          )
          return Effect.succeed(ExitCode.usage)
        }
      }
      if (Cause.isInterruptedOnly(cause)) return Effect.succeed(130)
      process.stderr.write(`microagent: internal error: ${Cause.pretty(cause)}\n`)
      return Effect.succeed(ExitCode.failed)
    })
  )
  // A reader that goes away (`| head`) ends the command: what it holds is released as on Ctrl-C.
  return Effect.raceFirst(command, Effect.promise(() => stdoutClosed))
}

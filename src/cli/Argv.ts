/**
 * Splits the command line before @effect/cli sees it: global flags are lifted out wherever they stand
 * (before the guest's argv), aliases become their verb, and the guest's argv of `run`/`exec` is set
 * aside untouched so that flags meant for the guest (`sh -c …`, `--help`) are never interpreted.
 */
import { Either } from "effect"
import { InvalidInput } from "../domain/Errors.ts"
import { Backend } from "../domain/Workspace.ts"
import type { InvocationShape } from "./Invocation.ts"
import { findVerb, suggestVerb } from "./Verbs.ts"

export type Parsed =
  | { readonly _tag: "Help"; readonly topic?: string; readonly subcommand?: string }
  | { readonly _tag: "Version" }
  | {
    readonly _tag: "Command"
    readonly verb: string
    readonly args: ReadonlyArray<string>
    readonly invocation: InvocationShape
  }

const usage = (message: string, remediation = "run `microagent help` for the list of commands") =>
  Either.left(new InvalidInput({ message, remediation }))

const isFormat = (word: string | undefined) => word === "json" || word === "text"

/**
 * `valueFlagsOf(verb)`: the verb's flags that take a value, in every spelling (read from its
 * descriptor by the caller), so that `run --name x IMAGE CMD` finds IMAGE.
 */
export const parseArgv = (
  argv: ReadonlyArray<string>,
  valueFlagsOf: (verb: string) => ReadonlyArray<string> = () => []
): Either.Either<Parsed, InvalidInput> => {
  let json: boolean | undefined
  let stateDir: string | undefined
  let backend: Backend | undefined
  let cluster = process.env.MICROAGENT_CLUSTER === "" ? undefined : process.env.MICROAGENT_CLUSTER
  let noColor = process.env.NO_COLOR !== undefined && process.env.NO_COLOR !== ""
  const rest: Array<string> = []
  let guestArgv: ReadonlyArray<string> = []
  let verbName: string | undefined
  let positionals = 0

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    const [flag, inline] = arg.startsWith("--") && arg.includes("=")
      ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)]
      : [arg, undefined]
    const value = () => inline ?? argv[++i]
    if (arg === "--") {
      guestArgv = argv.slice(i + 1)
      break
    }
    switch (flag) {
      case "--json":
        json = true
        continue
      case "--output": {
        const format = value()
        // `--output NAME=/path` declares an artifact; only json|text is the output format.
        if (format === "json" || format === "text") {
          json = format === "json"
          continue
        }
        if (format === undefined) return usage("--output needs a value: json or text")
        rest.push("--output", format)
        continue
      }
      case "--no-color":
        noColor = true
        continue
      case "--state-dir": {
        const dir = value()
        if (dir === undefined || dir === "") return usage("--state-dir needs a directory")
        stateDir = dir
        continue
      }
      case "--cluster": {
        const url = value()
        if (url === undefined || !/^postgres(ql)?:\/\/\S+$/.test(url)) {
          return usage(
            "--cluster needs the cluster's PostgreSQL URL",
            "for example --cluster postgres://microagent@db.internal:5432/microagent"
          )
        }
        cluster = url
        continue
      }
      case "--backend": {
        const name = value()
        if (!Backend.literals.includes(name as Backend)) {
          return usage(`unknown backend "${name ?? ""}"`, `choose one of: ${Backend.literals.join(", ")}`)
        }
        backend = name as Backend
        continue
      }
    }
    if (verbName === undefined) {
      if (arg === "--help" || arg === "-h") return Either.right({ _tag: "Help" })
      if (arg === "--version" || arg === "-v") return Either.right({ _tag: "Version" })
      if (arg.startsWith("-")) return usage(`unknown global flag ${arg}`)
      const verb = findVerb(arg)
      if (verb === undefined) {
        const suggestion = suggestVerb(arg)
        return usage(
          `unknown command "${arg}"`,
          suggestion
            ? `did you mean \`microagent ${suggestion}\`?`
            : "run `microagent help` for the list of commands"
        )
      }
      verbName = verb.name
      if (verb.name === "help") {
        const [topic, subcommand] = argv.slice(i + 1).filter((word) => !word.startsWith("-"))
        if (topic === "all") return Either.right({ _tag: "Help", topic: "all" })
        const target = topic === undefined ? undefined : findVerb(topic)
        if (topic !== undefined && target === undefined) {
          const suggestion = suggestVerb(topic)
          return usage(
            `unknown command "${topic}"`,
            suggestion
              ? `did you mean \`microagent help ${suggestion}\`?`
              : "`microagent help all` lists every command"
          )
        }
        if (target === undefined || target.name === "help") return Either.right({ _tag: "Help" })
        return Either.right(
          subcommand !== undefined && target.subcommands
            ? { _tag: "Help", topic: target.name, subcommand }
            : { _tag: "Help", topic: target.name }
        )
      }
      if (verb.name === "version") return Either.right({ _tag: "Version" })
      continue
    }
    const verb = findVerb(verbName)!
    // Help never performs the operation, wherever it stands before the guest's argv.
    if (arg === "--help" || arg === "-h") {
      const subcommand = verb.subcommands ? rest.find((word) => !word.startsWith("-")) : undefined
      return Either.right(
        subcommand === undefined
          ? { _tag: "Help", topic: verb.name }
          : { _tag: "Help", topic: verb.name, subcommand }
      )
    }
    rest.push(arg)
    if (arg.startsWith("-") && arg !== "-") {
      const takesValue = verb.valueFlags?.includes(arg) || valueFlagsOf(verb.name).includes(arg)
      if (inline === undefined && takesValue && i + 1 < argv.length) rest.push(argv[++i]!)
      continue
    }
    positionals++
    if (verb.guestArgs !== undefined && positionals === 1) {
      // Everything after the image (run) or the workspace (exec, connect) belongs to the guest,
      // verbatim, except output flags typed right after it (`connect web --json`): no guest command
      // starts with those, so they are microagent's.
      let next = i + 1
      for (; next < argv.length; next++) {
        const word = argv[next]!
        const inlineFormat = word.startsWith("--output=") ? word.slice("--output=".length) : undefined
        if (word === "--json") json = true
        else if (word === "--no-color") noColor = true
        else if (isFormat(inlineFormat)) json = inlineFormat === "json"
        else if (word === "--output" && isFormat(argv[next + 1])) json = argv[++next] === "json"
        else break
      }
      const after = argv.slice(next)
      guestArgv = after[0] === "--" ? after.slice(1) : after
      break
    }
  }
  if (verbName === undefined) return Either.right({ _tag: "Help" })
  return Either.right({
    _tag: "Command",
    verb: verbName,
    args: rest,
    invocation: { json, stateDir, backend, noColor, guestArgv, cluster }
  })
}

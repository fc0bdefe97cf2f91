/**
 * Checks a command's flags and arguments against its descriptor before @effect/cli parses them, so
 * that every mistake is the structured usage error (kind `permanent`, exit 2) naming the flag or the
 * argument at fault and what to write instead, rather than the parser's own text. A group named
 * without a subcommand asks for its help.
 */
import { Either } from "effect"
import * as NodeFs from "node:fs"
import { InvalidInput } from "../domain/Errors.ts"
import type { CommandSpec, FlagSpec } from "./Describe.ts"
import { usageLine, visibleSubcommands } from "./Help.ts"
import { nearest } from "./Verbs.ts"

export type Checked =
  | { readonly _tag: "Ok" }
  | { readonly _tag: "GroupHelp"; readonly path: ReadonlyArray<string>; readonly spec: CommandSpec }

const booleanWords = ["true", "1", "y", "yes", "on", "false", "0", "n", "no", "off"]

const seeHelp = (path: ReadonlyArray<string>) =>
  `\`microagent ${path.join(" ")} --help\` shows its flags and examples`

const fail = (message: string, remediation: string) => Either.left(new InvalidInput({ message, remediation }))

const spellings = (spec: CommandSpec) => spec.flags.flatMap((f) => [f.name, ...f.aliases])

const findFlag = (spec: CommandSpec, word: string): FlagSpec | undefined =>
  spec.flags.find((f) => f.name === word || f.aliases.includes(word))

const unknownFlag = (path: ReadonlyArray<string>, spec: CommandSpec, word: string) => {
  const suggestion = nearest(word, spellings(spec))
  return fail(
    `unknown flag ${word} for \`microagent ${path.join(" ")}\``,
    `${suggestion !== undefined ? `did you mean ${suggestion}? ` : ""}${seeHelp(path)}`
  )
}

/** Why `value` is not a valid value of `flag`, if it is not. */
const badValue = (flag: FlagSpec, value: string): string | undefined => {
  switch (flag.kind) {
    case "integer":
      return /^-?[0-9]+$/.test(value) ? undefined : `${flag.name} takes a whole number, not "${value}"`
    case "float":
      return value.trim() !== "" && Number.isFinite(Number(value))
        ? undefined
        : `${flag.name} takes a number, not "${value}"`
    case "choice":
      return flag.choices.includes(value)
        ? undefined
        : `${flag.name} takes one of ${flag.choices.join(", ")}, not "${value}"`
    case "bool":
      return booleanWords.includes(value)
        ? undefined
        : `${flag.name} takes no value (or true/false), not "${value}"`
    case "path": {
      const stat = NodeFs.statSync(value, { throwIfNoEntry: false })
      if (stat === undefined) {
        return flag.path?.exists === "yes"
          ? `${flag.name}: ${value} does not exist`
          : undefined
      }
      if (flag.path?.exists === "no") return `${flag.name}: ${value} exists already`
      if (flag.path?.type === "file" && stat.isDirectory()) {
        return `${flag.name} takes a file; ${value} is a directory`
      }
      if (flag.path?.type === "directory" && !stat.isDirectory()) {
        return `${flag.name} takes a directory; ${value} is not one`
      }
      return undefined
    }
    default:
      return undefined
  }
}

const checkStandard = (
  path: ReadonlyArray<string>,
  spec: CommandSpec,
  args: ReadonlyArray<string>
): Either.Either<Checked, InvalidInput> => {
  const counts = new Map<FlagSpec, number>()
  const positionals: Array<string> = []
  const usage = `usage: ${usageLine(path, spec)}`
  const use = (flag: FlagSpec) => {
    counts.set(flag, (counts.get(flag) ?? 0) + 1)
    if (!flag.repeated && counts.get(flag)! > 1) {
      return fail(`${flag.name} is given more than once`, `give it once; ${seeHelp(path)}`)
    }
    return undefined
  }
  for (let i = 0; i < args.length; i++) {
    const word = args[i]!
    if (word === "--") {
      positionals.push(...args.slice(i + 1))
      break
    }
    if (!word.startsWith("-") || word === "-" || /^-[0-9]/.test(word)) {
      positionals.push(word)
      continue
    }
    if (!word.startsWith("--") && word.length > 2) {
      // A cluster of one-letter switches: -yf.
      for (const letter of word.slice(1)) {
        const flag = findFlag(spec, `-${letter}`)
        if (flag === undefined) return unknownFlag(path, spec, word.length === 2 ? word : `-${letter}`)
        if (flag.kind !== "bool") {
          return fail(
            `${flag.name} takes a value and cannot be combined in ${word}`,
            `write ${flag.name} VALUE`
          )
        }
        const twice = use(flag)
        if (twice !== undefined) return twice
      }
      continue
    }
    const eq = word.startsWith("--") ? word.indexOf("=") : -1
    const name = eq > 0 ? word.slice(0, eq) : word
    const flag = findFlag(spec, name)
    if (flag === undefined) return unknownFlag(path, spec, name)
    const twice = use(flag)
    if (twice !== undefined) return twice
    let value: string | undefined
    if (eq > 0) value = word.slice(eq + 1)
    else if (flag.kind === "bool") {
      // The parser takes a following true/false as the switch's value.
      if (booleanWords.includes(args[i + 1] ?? "")) i++
      continue
    } else {
      value = args[++i]
      // `--memory --json`: the next word is another flag, not this one's value.
      if (value === undefined || (value.startsWith("--") && value.length > 2)) {
        return fail(`${flag.name} needs a value (${flag.placeholder ?? "VALUE"})`, usage)
      }
    }
    const problem = badValue(flag, value)
    if (problem !== undefined) return fail(problem, seeHelp(path))
  }
  for (const flag of spec.flags) {
    if (flag.required && !counts.has(flag)) {
      return fail(
        `${flag.name} is required`,
        `write ${flag.name} ${flag.placeholder ?? ""}`.trimEnd() + `; ${usage}`
      )
    }
  }
  let least = 0
  for (const arg of spec.args) {
    least += arg.min
    if (positionals.length < least) return fail(`missing argument ${arg.name}`, usage)
  }
  const most = spec.args.reduce((n, a) => n + a.max, 0)
  if (positionals.length > most) {
    return fail(`unexpected argument "${positionals[most]}"`, usage)
  }
  return Either.right({ _tag: "Ok" })
}

/** Checks `args` (what follows the command's name) against the command `spec` found at `path`. */
export const checkCommandLine = (
  path: ReadonlyArray<string>,
  spec: CommandSpec,
  args: ReadonlyArray<string>
): Either.Either<Checked, InvalidInput> => {
  if (spec.subcommands.length === 0) return checkStandard(path, spec, args)
  let i = 0
  for (; i < args.length; i++) {
    const word = args[i]!
    if (!word.startsWith("-") || word === "-") break
    const name = word.includes("=") ? word.slice(0, word.indexOf("=")) : word
    const flag = findFlag(spec, name)
    if (flag === undefined) return unknownFlag(path, spec, name)
    if (flag.kind !== "bool" && !word.includes("=")) i++
  }
  const sub = args[i]
  if (sub === undefined) return Either.right({ _tag: "GroupHelp", path, spec })
  const child = spec.subcommands.find((c) => c.name === sub)
  if (child === undefined) return Either.left(unknownSubcommand(path, spec, sub))
  return checkCommandLine([...path, sub], child, args.slice(i + 1))
}

/** `microagent image foo`: names the group's commands and the nearest one. */
export const unknownSubcommand = (path: ReadonlyArray<string>, spec: CommandSpec, word: string) => {
  const names = visibleSubcommands(spec).map((c) => c.names[0]!)
  const suggestion = nearest(word, spec.subcommands.map((c) => c.name))
  return new InvalidInput({
    message: `unknown command "${word}" for \`microagent ${path.join(" ")}\``,
    remediation: `${
      suggestion !== undefined ? `did you mean \`microagent ${[...path, suggestion].join(" ")}\`? ` : ""
    }${path.join(" ")} commands: ${names.join(", ")}`
  })
}

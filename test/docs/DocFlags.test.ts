/**
 * Every `microagent VERB … --flag` written in the README or docs/ (code blocks and inline code) names a
 * command that exists and flags that command accepts, as its own `--help` lists them.
 */
import { Either } from "effect"
import { assert, describe, it } from "vitest"
import { parseArgv } from "../../src/cli/Argv.ts"
import { helpFor, valueFlagsOf } from "../../src/cli/Main.ts"
import { allDocs } from "../support/docs.ts"

/** Flags every command takes (src/cli/Argv.ts lifts them out before the command parses). */
const globalFlags = new Set([
  "--json",
  "--output",
  "--state-dir",
  "--backend",
  "--no-color",
  "--help",
  "--version"
])

interface Mention {
  readonly where: string
  readonly words: ReadonlyArray<string>
}

/** The code of a page: fenced blocks (continuation lines joined) and inline code spans. */
const codeOf = (text: string): Array<string> => {
  const code: Array<string> = []
  const fenced = /^```\w*\n([\s\S]*?)^```$/gm
  for (const block of text.matchAll(fenced)) code.push(...block[1]!.replace(/\\\n\s*/g, " ").split("\n"))
  for (const span of text.replace(fenced, "").matchAll(/`([^`\n]+)`/g)) code.push(span[1]!)
  return code
}

const mentions = (): Array<Mention> =>
  allDocs().flatMap(({ name, text }) =>
    codeOf(text).flatMap((line) =>
      [...line.matchAll(/(?:^|[\s(;&|$])microagent((?: +[^\s|;&#`)]+)+)/g)].map((m) => ({
        where: `${name}: ${line.trim()}`,
        // Up to a comment, a separator or the guest's argv; placeholders' brackets dropped.
        words: m[1]!.trim().split(/ +/)
      }))
    )
  ).map(({ where, words }) => ({
    where,
    words: words.slice(0, words.indexOf("--") >= 0 ? words.indexOf("--") : undefined)
  }))
    // `microagent [global flags] COMMAND` and the like are synopses, not commands.
    .filter(({ words }) => words.length > 0 && /^[a-z][a-z-]*$/.test(words[0]!))
    .map(({ where, words }) => ({ where, words: words.map((w) => w.replace(/^\[+|\]+$/g, "")) }))

describe("commands and flags named in the docs exist", () => {
  const all = mentions()

  it("finds the docs' commands", () => {
    assert.isAbove(all.length, 50)
  })

  // The help texts come from the CLI's own help code, in-process (test/cli/Help.test.ts checks that the
  // shipped executable prints the same): a hundred CLI processes would take minutes on a busy host.
  it("every verb, subcommand and --flag is accepted by the CLI", () => {
    const help = (words: ReadonlyArray<string>): { code: number; text: string } => {
      const parsed = parseArgv([...words, "--help"], valueFlagsOf)
      if (Either.isLeft(parsed)) return { code: 2, text: parsed.left.message }
      // `version --help` prints the version, as `version` does; it takes no flags.
      if (parsed.right._tag === "Version") return { code: 0, text: "" }
      if (parsed.right._tag !== "Help") return { code: 1, text: "" }
      const text = helpFor(parsed.right.topic, parsed.right.subcommand, { width: 80, color: false })
      return Either.isLeft(text) ? { code: 2, text: text.left.message } : { code: 0, text: text.right }
    }
    const problems: Array<string> = []
    for (const mention of all) {
      const [verb, second] = mention.words
      const sub = second !== undefined && /^[a-z][a-z-]*$/.test(second) ? second : undefined
      const verbHelp = help([verb!])
      if (verbHelp.code !== 0) {
        problems.push(`${mention.where}: \`microagent ${verb}\` is not a command`)
        continue
      }
      const subHelp = sub === undefined ? verbHelp : help([verb!, sub])
      const text = subHelp.code === 0 ? subHelp.text : verbHelp.text
      for (const word of mention.words) {
        if (!word.startsWith("--")) continue
        const flag = word.split("=")[0]!
        if (globalFlags.has(flag) || /^--[a-z][a-z0-9-]*$/.test(flag) === false) continue
        if (!new RegExp(`${flag}(?![a-z0-9-])`).test(text)) {
          problems.push(
            `${mention.where}: \`${flag}\` is not a flag of \`microagent ${verb}${sub ? ` ${sub}` : ""}\``
          )
        }
      }
    }
    assert.deepStrictEqual([...new Set(problems)], [])
  })
})

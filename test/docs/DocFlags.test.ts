/**
 * Every `microagent VERB … --flag` written in the README or docs/ (code blocks and inline code) names a
 * command that exists and flags that command accepts, as its own `--help` lists them.
 */
import { afterAll, assert, describe, it } from "vitest"
import { cliAsync } from "../support/cli.ts"
import { allDocs } from "../support/docs.ts"
import { cleanupTempDirs, tempDir } from "../support/kernel.ts"

afterAll(cleanupTempDirs)

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

  it("every verb, subcommand and --flag is accepted by the CLI", { timeout: 180_000 }, async () => {
    const stateDir = tempDir("microagent-docflags-")
    const helpFor = new Map<string, Promise<{ code: number; text: string }>>()
    const help = (words: ReadonlyArray<string>) => {
      const key = words.join(" ")
      if (!helpFor.has(key)) {
        helpFor.set(
          key,
          cliAsync([...words, "--help"], { stateDir }).then((r) => ({
            code: r.code,
            text: r.stdout + r.stderr
          }))
        )
      }
      return helpFor.get(key)!
    }
    // Every help text the checks need, a few CLI processes at a time.
    const keys = [...new Set(all.flatMap(({ words }) => [words[0]!, words.slice(0, 2).join(" ")]))]
    for (let i = 0; i < keys.length; i += 6) {
      await Promise.all(keys.slice(i, i + 6).map((key) => help(key.split(" "))))
    }
    const problems: Array<string> = []
    for (const mention of all) {
      const [verb, second] = mention.words
      const sub = second !== undefined && /^[a-z][a-z-]*$/.test(second) ? second : undefined
      const verbHelp = await help([verb!])
      if (verbHelp.code !== 0) {
        problems.push(`${mention.where}: \`microagent ${verb}\` is not a command`)
        continue
      }
      const subHelp = sub === undefined ? verbHelp : await help([verb!, sub])
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

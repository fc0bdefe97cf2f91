/**
 * Every remediation in src/ that tells the user to run `microagent VERB [SUBCOMMAND] [--flag]` names
 * a command, subcommand and flags that exist. Remediations are found with the TypeScript parser: the
 * strings of every `remediation:` property, of the `remedies` table, and of the remediation argument
 * of the CLI's usage-error helpers.
 */
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import ts from "typescript"
import { assert, describe, it } from "vitest"
import type { CommandSpec } from "../../src/cli/Describe.ts"
import { commandSpecs } from "../../src/cli/Main.ts"
import { findVerb } from "../../src/cli/Verbs.ts"

const srcDir = NodePath.resolve(import.meta.dirname, "../../src")

const sourceFiles = (dir: string): Array<string> =>
  NodeFs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = NodePath.join(dir, entry.name)
    return entry.isDirectory() ? sourceFiles(path) : path.endsWith(".ts") ? [path] : []
  })

/** The text of every string literal under `node`; a template's substitutions become `${}`. */
const stringsUnder = (node: ts.Node): Array<string> => {
  const out: Array<string> = []
  const visit = (n: ts.Node) => {
    if (ts.isStringLiteral(n) || ts.isNoSubstitutionTemplateLiteral(n)) out.push(n.text)
    else if (ts.isTemplateExpression(n)) {
      out.push(n.head.text + n.templateSpans.map((span) => `\${}${span.literal.text}`).join(""))
      for (const span of n.templateSpans) visit(span.expression)
      return
    }
    ts.forEachChild(n, visit)
  }
  visit(node)
  return out
}

interface Remediation {
  readonly file: string
  readonly text: string
}

const remediations = (): Array<Remediation> =>
  sourceFiles(srcDir).flatMap((file) => {
    const source = ts.createSourceFile(file, NodeFs.readFileSync(file, "utf8"), ts.ScriptTarget.Latest, true)
    const found: Array<Remediation> = []
    const add = (node: ts.Node) => {
      for (const text of stringsUnder(node)) found.push({ file: NodePath.relative(srcDir, file), text })
    }
    const visit = (node: ts.Node) => {
      if (ts.isPropertyAssignment(node) && node.name.getText(source) === "remediation") add(node.initializer)
      if (ts.isVariableDeclaration(node) && node.name.getText(source) === "remedies" && node.initializer) {
        add(node.initializer)
      }
      if (
        ts.isCallExpression(node) && ["usage", "fail"].includes(node.expression.getText(source))
        && node.arguments[1] !== undefined
      ) add(node.arguments[1])
      ts.forEachChild(node, visit)
    }
    visit(source)
    return found
  })

const globalFlags = ["--json", "--output", "--state-dir", "--backend", "--no-color", "--help", "--version"]

const specOf = (path: ReadonlyArray<string>): CommandSpec | undefined => {
  let spec = commandSpecs().find((s) => s.name === path[0])
  for (const name of path.slice(1)) spec = spec?.subcommands.find((c) => c.name === name)
  return spec
}

/** What is wrong with one `microagent …` mention, if anything. */
const problemOf = (mention: string): string | undefined => {
  const words = mention.split(/\s+/).slice(1)
  const verb = findVerb(words[0] ?? "")
  if (verb === undefined) return `no command "${words[0]}"`
  const path = [verb.name]
  let spec = specOf(path)
  if (spec === undefined) return undefined // help, version: no flags
  if (spec.subcommands.length > 0 && /^[a-z]/.test(words[1] ?? "")) {
    const child = spec.subcommands.find((c) => c.name === words[1])
    if (child === undefined) return `no command "${verb.name} ${words[1]}"`
    spec = child
    path.push(child.name)
  }
  for (const word of words) {
    if (word === "--" || word === "-") break
    const flag = /^(--?[a-z][\w-]*)/.exec(word)?.[1]
    if (flag === undefined || globalFlags.includes(flag)) continue
    if (!spec.flags.some((f) => f.name === flag || f.aliases.includes(flag))) {
      return `no flag ${flag} for "microagent ${path.join(" ")}"`
    }
  }
  return undefined
}

describe("remediations name only what exists", () => {
  const all = remediations()

  it("are found in src/ (the extraction works)", () => {
    assert.isAbove(all.length, 50)
    assert.isTrue(all.some((r) => r.text.includes("microagent list")))
  })

  it("each `microagent VERB …` they mention is a real command with real flags", () => {
    const problems: Array<string> = []
    for (const { file, text } of all) {
      // A mention runs to the end of its backquoted span, or of the text.
      for (const match of text.matchAll(/microagent ([a-z][^`;,)]*)/g)) {
        const problem = problemOf(`microagent ${match[1]!.trim()}`)
        if (problem !== undefined) problems.push(`${file}: "${text}": ${problem}`)
      }
    }
    assert.deepStrictEqual(problems, [])
  })

  it("the checker itself catches a command that does not exist, and a flag that does not", () => {
    assert.strictEqual(problemOf("microagent unpause w1"), `no command "unpause"`)
    assert.isUndefined(problemOf("microagent resume w1"))
    assert.strictEqual(problemOf("microagent image pul x"), `no command "image pul"`)
    assert.strictEqual(problemOf("microagent exec --stream --jsn w1"), `no flag --jsn for "microagent exec"`)
    assert.isUndefined(problemOf("microagent exec --stream --json w1 -- CMD"))
  })
})

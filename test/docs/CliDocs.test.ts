import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { assert, describe, it } from "vitest"
import { documentedCommands, updateReference } from "../../src/cli/CliReference.ts"
import { flagSynopsis, usageLine } from "../../src/cli/Help.ts"
import { commandSpecs, helpFor } from "../../src/cli/Main.ts"
import { verbs } from "../../src/cli/Verbs.ts"

const doc = NodeFs.readFileSync(NodePath.resolve(import.meta.dirname, "../../docs/cli.md"), "utf8")

/** The generated block of one command. */
const blockOf = (name: string) => {
  const start = doc.indexOf(`<!-- cli:${name} -->`)
  const end = doc.indexOf(`<!-- /cli:${name} -->`)
  return start >= 0 && end > start ? doc.slice(start, end) : ""
}

describe("docs/cli.md matches the command tree and the help output", () => {
  it("is what `npm run docs:cli` generates from the command tree (regenerate with it)", () => {
    assert.strictEqual(doc, updateReference(doc), "docs/cli.md is stale: run `npm run docs:cli`")
  })

  it("documents every command once, and only real ones", () => {
    const tree = commandSpecs().map((spec) => spec.name).sort()
    assert.deepStrictEqual(documentedCommands(doc).sort(), tree)
    for (const verb of verbs) assert.include(doc, `### \`${verb.name}\``)
  })

  for (const spec of commandSpecs()) {
    it(`${spec.name}: the usage line and every flag of its --help are in its block`, () => {
      const block = blockOf(spec.name)
      const help = helpFor(spec.name, undefined, { width: 80, color: false })
      assert.isTrue(help._tag === "Right")
      assert.include(block, `\`${usageLine([spec.name], spec)}\``)
      assert.include(help._tag === "Right" ? help.right : "", `Usage: ${usageLine([spec.name], spec)}`)
      for (const child of [spec, ...spec.subcommands]) {
        for (const flag of child.flags) {
          assert.include(
            block,
            `\`${flagSynopsis(flag).replace(/\|/g, "\\|")}\``,
            `${child.name} ${flag.name}`
          )
        }
      }
    })
  }
})

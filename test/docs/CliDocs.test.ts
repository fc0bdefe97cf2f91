import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { assert, describe, it } from "vitest"
import { commandHelp } from "../../src/cli/Main.ts"
import { verbs } from "../../src/cli/Verbs.ts"

const doc = NodeFs.readFileSync(NodePath.resolve(import.meta.dirname, "../../docs/cli.md"), "utf8")

/** The text of the `### \`verb\`` section, up to the next heading. */
const sections = new Map(
  [...doc.matchAll(/^### `([a-z-]+)`\n([\s\S]*?)(?=^#{2,3} |$(?![\s\S]))/gm)].map((m) => [m[1]!, m[2]!])
)

describe("docs/cli.md matches the command tree", () => {
  it("documents every command, and only real ones", () => {
    assert.deepStrictEqual([...sections.keys()].sort(), verbs.map((v) => v.name).sort())
  })

  for (const verb of verbs) {
    it(`documents the usage, aliases and every flag of ${verb.name}`, () => {
      const section = sections.get(verb.name) ?? ""
      assert.include(section, `\`${verb.usage}\``)
      for (const alias of verb.aliases ?? []) assert.include(section, `alias \`${alias}\``)
      const help = commandHelp(verb.name, false)
      const flags = new Set([...help.matchAll(/^(?:\(-[a-z], )?(--[a-z-]+)/gm)].map((m) => m[1]!))
      for (const flag of flags) {
        assert.include(section, `\`${flag}`, `${verb.name}: ${flag} is not documented`)
      }
    })
  }
})

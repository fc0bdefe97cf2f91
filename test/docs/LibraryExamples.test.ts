/**
 * docs/library.md shows only what the examples run: every TypeScript block on the page is a file of
 * examples/ (test/e2e/examples.test.ts installs the packed package into them, type-checks and runs
 * them), copied whole, so the page cannot drift from code that is built and run.
 */
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { assert, describe, it } from "vitest"
import { docBlocks } from "../support/docs.ts"
import { repoRoot } from "../support/kernel.ts"

/** Every source file of every example, by its path in the repository. */
const exampleSources = (): Map<string, string> => {
  const out = new Map<string, string>()
  const examples = NodePath.join(repoRoot, "examples")
  for (const example of NodeFs.readdirSync(examples)) {
    const dir = NodePath.join(examples, example, "src")
    if (!NodeFs.existsSync(dir)) continue
    for (const file of NodeFs.readdirSync(dir).filter((f) => f.endsWith(".ts"))) {
      out.set(
        `examples/${example}/src/${file}`,
        NodeFs.readFileSync(NodePath.join(dir, file), "utf8").trimEnd()
      )
    }
  }
  return out
}

describe("docs/library.md", () => {
  const blocks = docBlocks("library.md").filter((b) => b.lang === "ts")
  const sources = exampleSources()

  it("has examples, from both example applications", () => {
    assert.isAtLeast(blocks.length, 4)
    const shown = blocks.map((b) => [...sources].find(([, code]) => code === b.code.trimEnd())?.[0])
    assert.isTrue(shown.some((file) => file?.startsWith("examples/effect-host/")))
    assert.isTrue(shown.some((file) => file?.startsWith("examples/promise-host/")))
  })

  blocks.forEach((block) => {
    it(`the block at line ${block.line} is an example file, whole`, () => {
      const match = [...sources].find(([, code]) => code === block.code.trimEnd())
      assert.isDefined(
        match,
        `docs/library.md:${block.line} is not the content of any of ${[...sources.keys()].join(", ")}`
      )
    })
  })
})

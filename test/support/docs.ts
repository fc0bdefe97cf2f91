/**
 * The documentation's fenced code blocks, for the tests that run them. A block is run unless the line
 * before its fence is `<!-- docs-test: skip: REASON -->` (a reason is required: it says why that block
 * cannot run on a test machine, such as a pull from the internet). `<!-- docs-test: continues -->` makes
 * a TypeScript block part of the module of the block before it.
 */
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { repoRoot } from "./kernel.ts"

export interface DocBlock {
  readonly doc: string
  readonly line: number
  readonly lang: string
  readonly code: string
  readonly skip: string | undefined
  /** The block continues the one before it (the same module or shell session). */
  readonly continues: boolean
}

export const docPath = (doc: string) => NodePath.join(repoRoot, "docs", doc)

export const docBlocks = (doc: string): Array<DocBlock> => {
  const lines = NodeFs.readFileSync(docPath(doc), "utf8").split("\n")
  const blocks: Array<DocBlock> = []
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\w*)\s*$/.exec(lines[i]!)
    if (open === null) continue
    const start = i
    const body: Array<string> = []
    for (i++; i < lines.length && lines[i] !== "```"; i++) body.push(lines[i]!)
    const before = lines[start - 1] ?? ""
    const marker = /^<!-- docs-test: skip: (.+) -->$/.exec(before)
    const continues = before === "<!-- docs-test: continues -->"
    if (before.startsWith("<!-- docs-test") && marker === null && !continues) {
      throw new Error(`${doc}:${start}: malformed docs-test marker (skip: REASON, or continues)`)
    }
    blocks.push({ doc, line: start + 1, lang: open[1]!, code: body.join("\n"), skip: marker?.[1], continues })
  }
  return blocks
}

/** Every page of docs/ and the README, as text. */
export const allDocs = (): Array<{ readonly name: string; readonly text: string }> => [
  { name: "README.md", text: NodeFs.readFileSync(NodePath.join(repoRoot, "README.md"), "utf8") },
  ...NodeFs.readdirSync(NodePath.join(repoRoot, "docs")).filter((f) => f.endsWith(".md")).sort().map((
    name
  ) => ({
    name: `docs/${name}`,
    text: NodeFs.readFileSync(docPath(name), "utf8")
  }))
]

/**
 * A directory holding a `microagent` command that runs this checkout's bundle, to put first on PATH:
 * the docs' commands then exercise the code under test, whatever else the PATH holds.
 */
export const microagentOnPath = (dir: string): string => {
  const bin = NodePath.join(dir, "bin")
  NodeFs.mkdirSync(bin, { recursive: true })
  const script = NodePath.join(bin, "microagent")
  NodeFs.writeFileSync(
    script,
    `#!/bin/sh\nexec "${process.execPath}" "${NodePath.join(repoRoot, "bin", "microagent.mjs")}" "$@"\n`,
    { mode: 0o755 }
  )
  return bin
}

/**
 * The TypeScript examples of docs/library.md, compiled with the project's compiler settings and run on
 * the fake backend, as a reader would copy them. A block marked `<!-- docs-test: continues -->`
 * continues the one before it (one module).
 */
import { build } from "esbuild"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { afterAll, assert, describe, it } from "vitest"
import { stopRuntime } from "../support/cli.ts"
import { docBlocks, microagentOnPath } from "../support/docs.ts"
import { cleanupTempDirs, repoRoot, tempDir } from "../support/kernel.ts"

afterAll(cleanupTempDirs)

/** The page's examples as modules: each block, with the blocks that continue it appended. */
const modules = (): Array<{ readonly line: number; readonly code: string }> => {
  const result: Array<{ line: number; code: string }> = []
  for (const block of docBlocks("library.md").filter((b) => b.lang === "ts")) {
    if (block.continues && result.length > 0) result[result.length - 1]!.code += `\n${block.code}`
    else result.push({ line: block.line, code: block.code })
  }
  return result
}

describe("docs/library.md", () => {
  const examples = modules()
  // Inside the repository, so `./src/…` imports and node_modules resolve as the page says.
  const dir = NodePath.join(repoRoot, ".cache", "docs-examples")
  NodeFs.rmSync(dir, { recursive: true, force: true })
  NodeFs.mkdirSync(dir, { recursive: true })
  const files = examples.map((example, i) => {
    const file = NodePath.join(dir, `example${i + 1}.ts`)
    NodeFs.writeFileSync(file, example.code.replaceAll('from "./src/', 'from "../../src/'))
    return file
  })

  it("has examples", () => {
    assert.isAtLeast(examples.length, 2)
  })

  it("every example type-checks", { timeout: 180_000 }, () => {
    NodeFs.writeFileSync(
      NodePath.join(dir, "tsconfig.json"),
      JSON.stringify({
        extends: "../../tsconfig.base.json",
        compilerOptions: { incremental: false, module: "NodeNext" },
        files: files.map((f) => NodePath.basename(f))
      })
    )
    const tsc = NodeChild.spawnSync(process.execPath, [
      NodePath.join(repoRoot, "node_modules/typescript/bin/tsc"),
      "-p",
      dir
    ], {
      encoding: "utf8"
    })
    assert.strictEqual(tsc.status, 0, `tsc:\n${tsc.stdout}${tsc.stderr}`)
  })

  examples.forEach((example, i) => {
    it(`the example at line ${example.line} runs on the fake backend`, { timeout: 180_000 }, async () => {
      const bundle = NodePath.join(dir, `example${i + 1}.mjs`)
      await build({
        entryPoints: [files[i]!],
        outfile: bundle,
        bundle: true,
        platform: "node",
        format: "esm",
        target: "node20",
        packages: "external",
        logLevel: "error"
      })
      const home = tempDir("microagent-docs-lib-")
      const bin = microagentOnPath(tempDir("microagent-docs-bin-"))
      const run = NodeChild.spawnSync(process.execPath, [bundle], {
        cwd: dir,
        encoding: "utf8",
        timeout: 150_000,
        env: {
          ...process.env,
          MICROAGENT_HOME: home,
          MICROAGENT_BACKEND: "fake",
          MICROAGENT_RUNTIME_IDLE_SECONDS: "2",
          PATH: `${bin}:${process.env.PATH ?? ""}`
        }
      })
      stopRuntime(home)
      assert.strictEqual(run.status, 0, `exit ${run.status}\n${run.stdout}\n${run.stderr}`)
      assert.isAbove(run.stdout.trim().length, 0)
    })
  })
})

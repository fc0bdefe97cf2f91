/**
 * The docs' shell examples, run as a reader would paste them: each page's `sh` blocks in order, in one
 * working directory and state directory, with this checkout's `microagent` first on the PATH, on real
 * QEMU microVMs. A block marked `<!-- docs-test: skip: REASON -->` is not run (the reason says why).
 * Every block must exit 0 under `bash -e -o pipefail`, and a command written `CMD   # → WORD` must print
 * WORD (output is text, as on a terminal); afterwards nothing of the page may still run.
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import { afterAll, assert, describe, it } from "vitest"
import { cliAsync, stopRuntime } from "../support/cli.ts"
import { docBlocks, microagentOnPath } from "../support/docs.ts"
import {
  cleanupTempDirs,
  qemuProcessesMentioning,
  requireTool,
  requireVmTools,
  tempDir
} from "../support/kernel.ts"

afterAll(cleanupTempDirs)

const pages = ["quickstart.md", "files.md", "volumes.md", "secrets.md", "networking.md"]

/** The block as a script: continuation lines joined, and each `CMD   # → WORD` checked for WORD. */
const scriptOf = (code: string): string =>
  code.replace(/\\\n\s*/g, " ").split("\n").map((line) => {
    const shown = /^(.*\S)\s+# → (\S+)/.exec(line)
    if (shown === null) return line
    const word = shown[2]!.replaceAll("'", "'\\''")
    return `out=$(${
      shown[1]
    }); printf '%s\\n' "$out"; case "$out" in *'${word}'*) ;; *) echo "expected the output to show '${word}'" >&2; exit 1 ;; esac`
  }).join("\n")

const bash = (code: string, cwd: string, env: NodeJS.ProcessEnv) =>
  new Promise<{ code: number; output: string }>((resolve) => {
    const child = NodeChild.spawn("bash", ["-e", "-o", "pipefail", "-c", code], {
      cwd,
      env,
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    child.stdout.on("data", (d) => (output += d))
    child.stderr.on("data", (d) => (output += d))
    const timer = setTimeout(() => child.kill("SIGKILL"), 240_000)
    child.on("close", (code) => {
      clearTimeout(timer)
      resolve({ code: code ?? -1, output })
    })
  })

describe("the docs' shell examples run as written", () => {
  for (const page of pages) {
    it(`docs/${page}`, { timeout: 900_000 }, async () => {
      requireVmTools()
      requireTool("curl", "curl")
      const blocks = docBlocks(page).filter((b) => b.lang === "sh")
      assert.isAbove(blocks.length, 0, `docs/${page} has no sh block`)
      const home = tempDir("microagent-docs-home-")
      const cwd = tempDir("microagent-docs-cwd-")
      const env = {
        ...process.env,
        PATH: `${microagentOnPath(tempDir("microagent-docs-bin-"))}:${process.env.PATH ?? ""}`,
        MICROAGENT_HOME: home,
        MICROAGENT_BACKEND: "qemu",
        MICROAGENT_RUNTIME_IDLE_SECONDS: "2",
        MICROAGENT_OUTPUT: "text",
        NO_COLOR: "1"
      }
      try {
        for (const block of blocks) {
          if (block.skip !== undefined) {
            console.log(`docs/${page}:${block.line}: skipped (${block.skip})`)
            continue
          }
          const result = await bash(scriptOf(block.code), cwd, env)
          assert.strictEqual(
            result.code,
            0,
            `docs/${page}:${block.line} exited ${result.code}:\n${block.code}\n--- output ---\n${
              result.output.slice(-4000)
            }`
          )
        }
      } finally {
        const listed = await cliAsync(["list", "--json"], { stateDir: home })
        const names = listed.code === 0
          ? (JSON.parse(listed.stdout) as { workspaces: Array<{ name: string }> }).workspaces.map((w) =>
            w.name
          )
          : []
        if (names.length > 0) await cliAsync(["delete", "--force", ...names], { stateDir: home })
        stopRuntime(home)
      }
      // The page cleans up after itself: no workspace left running.
      assert.deepStrictEqual(qemuProcessesMentioning(home), [])
      assert.isTrue(NodeFs.existsSync(home))
    })
  }
})

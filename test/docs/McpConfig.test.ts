/**
 * The MCP client configuration the docs show starts a server after the README's set-up: `microagent`
 * is on the PATH (scripts/setup.sh links it), and the official MCP SDK client initializes with it.
 */
import { Client } from "@modelcontextprotocol/sdk/client/index.js"
import { getDefaultEnvironment, StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import { afterAll, assert, describe, it } from "vitest"
import { stopRuntime } from "../support/cli.ts"
import { allDocs, microagentOnPath } from "../support/docs.ts"
import { cleanupTempDirs, tempDir } from "../support/kernel.ts"

afterAll(cleanupTempDirs)

interface ServerConfig {
  readonly command: string
  readonly args?: ReadonlyArray<string>
  readonly env?: Record<string, string>
}

const configurations = () =>
  allDocs().flatMap(({ name, text }) =>
    [...text.matchAll(/^```json\n([\s\S]*?)^```$/gm)]
      .map((m) => JSON.parse(m[1]!) as { mcpServers?: Record<string, ServerConfig> })
      .flatMap((json) => Object.values(json.mcpServers ?? {}).map((server) => ({ doc: name, server })))
  )

describe("the documented MCP configuration", () => {
  const found = configurations()

  it("is shown in the docs", () => {
    assert.isAbove(found.length, 0)
  })

  it("names a command the README's set-up puts on the PATH", () => {
    for (const { doc, server } of found) {
      const which = NodeChild.spawnSync("sh", ["-c", `command -v ${server.command}`], { encoding: "utf8" })
      assert.strictEqual(
        which.status,
        0,
        `${doc}: \`${server.command}\` is not on the PATH: run scripts/setup.sh (it links it)`
      )
    }
  })

  for (const [i, { doc, server }] of found.entries()) {
    it(`${doc} #${i + 1}: the server starts and initializes`, { timeout: 60_000 }, async () => {
      const home = tempDir("microagent-mcp-config-")
      // A host root in an example is the reader's own project directory: stand in a temporary one when
      // the named directory does not exist here (the server refuses a missing root at start-up).
      const args = (server.args ?? []).map((arg, n, all) =>
        all[n - 1] === "--host-root" && !NodeFs.existsSync(arg) ? tempDir("microagent-mcp-root-") : arg
      )
      const transport = new StdioClientTransport({
        command: server.command,
        args,
        env: {
          ...getDefaultEnvironment(),
          // This checkout's bundle under the documented command name.
          PATH: `${microagentOnPath(tempDir("microagent-mcp-bin-"))}:${process.env.PATH ?? ""}`,
          MICROAGENT_HOME: home,
          MICROAGENT_BACKEND: "fake",
          ...server.env
        },
        stderr: "pipe"
      })
      const client = new Client({ name: "docs-test", version: "1.0.0" })
      try {
        await client.connect(transport)
        assert.include(client.getServerVersion()?.name ?? "", "microagent")
        const tools = await client.listTools()
        assert.isAbove(tools.tools.length, 10)
      } finally {
        await client.close()
        stopRuntime(home)
      }
    })
  }
})

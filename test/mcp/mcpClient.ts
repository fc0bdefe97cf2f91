/**
 * A real MCP client (the official SDK) connected to `microagent serve mcp` started as its subprocess,
 * the way agent hosts run it. The backend is a parameter, so the same tests run on real VMs later.
 */
import { Client } from "@modelcontextprotocol/sdk/client/index.js"
import { getDefaultEnvironment, StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js"
import { ListRootsRequestSchema } from "@modelcontextprotocol/sdk/types.js"
import { Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { pathToFileURL } from "node:url"
import { killFakeVmms } from "../support/fakeEnvironment.ts"

export const binPath = NodePath.resolve(import.meta.dirname, "../../bin/microagent.mjs")

/** Where the tests run: the backend, the image workspaces boot from, and how a state directory is set up. */
export interface TestTarget {
  readonly backend: string
  readonly image: string
  /** Prepares a fresh state directory (the real-VM tier installs a kernel there, say). */
  readonly prepare?: (stateDir: string) => Promise<void>
  /** More environment for the server process. */
  readonly env?: Readonly<Record<string, string>>
}

/** The fast tier by default; `MICROAGENT_TEST_BACKEND` and `MICROAGENT_TEST_IMAGE` pick another. */
export const targetFromEnvironment = (): TestTarget => ({
  backend: process.env.MICROAGENT_TEST_BACKEND ?? "fake",
  image: process.env.MICROAGENT_TEST_IMAGE ?? "alpine"
})

export interface Envelope {
  readonly ok: boolean
  readonly result?: any
  readonly error?: {
    readonly kind: string
    readonly message: string
    readonly remediation: string
    readonly retryable: boolean
    readonly usage?: boolean
  }
  readonly meta: {
    readonly tool: string
    readonly durationMs: number
    readonly idempotencyReplay?: boolean
    readonly preview?: boolean
    readonly principal?: string
  }
}

export interface Connected {
  readonly client: Client
  /** Everything the server wrote on stderr so far. */
  readonly stderr: () => string
  /** Transport errors: a line on stdout that is not protocol would show up here. */
  readonly transportErrors: Array<Error>
  /** Calls a tool and returns its envelope, checking that the text and structured forms agree. */
  readonly call: (name: string, args?: Record<string, unknown>) => Promise<Envelope>
  readonly close: () => Promise<void>
}

export const makeStateDir = async (target: TestTarget) => {
  const stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-mcp-"))
  await target.prepare?.(stateDir)
  return stateDir
}

/** Stops the state directory's runtime (the servers start one on demand) and waits until it is gone. */
export const stopRuntime = async (stateDir: string) => {
  let pid: number
  try {
    pid = Number(
      NodeFs.readFileSync(NodePath.join(stateDir, "run", "runtime.pid"), "utf8").trim().split(/\s+/)[0]
    )
    process.kill(pid, "SIGTERM")
  } catch {
    return
  }
  for (let i = 0; i < 100; i++) {
    try {
      process.kill(pid, 0)
    } catch {
      return
    }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

export const removeStateDir = async (stateDir: string) => {
  await stopRuntime(stateDir)
  await Effect.runPromise(killFakeVmms(stateDir))
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
}

/** Runtimes started by the tests exit soon after they are left alone. */
export const runtimeEnv = { MICROAGENT_RUNTIME_IDLE_SECONDS: "2" }

export interface ConnectOptions {
  /** More arguments of `serve mcp` (`--host-root DIR`, `--allow-secret NAME`, …). */
  readonly args?: ReadonlyArray<string>
  /** More environment for the server process. */
  readonly env?: Readonly<Record<string, string>>
  /** Makes the client declare the roots capability and answer roots/list with these directories. */
  readonly roots?: () => ReadonlyArray<string>
}

export const connect = async (
  stateDir: string,
  target: TestTarget,
  options: ConnectOptions = {}
): Promise<Connected> => {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [binPath, "serve", "mcp", "--backend", target.backend, ...(options.args ?? [])],
    env: {
      ...getDefaultEnvironment(),
      ...runtimeEnv,
      ...target.env,
      ...options.env,
      MICROAGENT_HOME: stateDir,
      NO_COLOR: "1"
    },
    stderr: "pipe"
  })
  let stderr = ""
  transport.stderr?.on("data", (data) => (stderr += data))
  const transportErrors: Array<Error> = []
  const roots = options.roots
  const client = new Client(
    { name: "microagent-tests", version: "1.0.0" },
    roots === undefined ? {} : { capabilities: { roots: { listChanged: true } } }
  )
  if (roots !== undefined) {
    client.setRequestHandler(ListRootsRequestSchema, () => ({
      roots: roots().map((dir) => ({ uri: pathToFileURL(dir).href, name: NodePath.basename(dir) }))
    }))
  }
  await client.connect(transport)
  transport.onerror = (error) => transportErrors.push(error)
  const call = async (name: string, args: Record<string, unknown> = {}): Promise<Envelope> => {
    const result = await client.callTool({ name, arguments: args })
    const content = result.content as Array<{ type: string; text: string }>
    const envelope = result.structuredContent as unknown as Envelope
    if (content[0]?.type !== "text") throw new Error(`${name}: no text content`)
    if (JSON.stringify(JSON.parse(content[0].text)) !== JSON.stringify(envelope)) {
      throw new Error(`${name}: the text and structured results differ`)
    }
    if (result.isError !== !envelope.ok) throw new Error(`${name}: isError disagrees with the envelope`)
    return envelope
  }
  return { client, stderr: () => stderr, transportErrors, call, close: () => client.close() }
}

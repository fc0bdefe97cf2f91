/**
 * `serve mcp` on hostile input, spoken to byte by byte: unparseable lines, invalid requests, unknown
 * methods and both framings, answered as JSON-RPC says, and the server still serving afterwards. Also
 * the framing reader on its own, and the tools without arguments refusing unknown ones (through the
 * official SDK client).
 */
import { spawn } from "node:child_process"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { FrameReader } from "../../src/mcp/StdioProtocol.ts"
import {
  binPath,
  connect,
  makeStateDir,
  removeStateDir,
  runtimeEnv,
  targetFromEnvironment
} from "./mcpClient.ts"

const target = targetFromEnvironment()

const initialize = {
  jsonrpc: "2.0",
  id: 1,
  method: "initialize",
  params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "raw", version: "0" } }
}

interface Reply {
  readonly id?: number | string | null
  readonly result?: any
  readonly error?: { readonly code: number; readonly message: string }
}

/** Runs `serve mcp`, writes `input`, closes stdin, and returns its exit code and stdout. */
const exchange = (stateDir: string, input: string) =>
  new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [binPath, "serve", "mcp", "--backend", target.backend], {
      env: { ...process.env, ...runtimeEnv, MICROAGENT_HOME: stateDir },
      stdio: ["pipe", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (data) => (stdout += data))
    child.stderr.on("data", (data) => (stderr += data))
    child.on("exit", (code) => resolve({ code, stdout, stderr }))
    child.stdin.end(input)
  })

const lines = (...messages: Array<unknown>) =>
  messages.map((m) => (typeof m === "string" ? m : JSON.stringify(m))).join("\n") + "\n"

const parseLines = (stdout: string): Array<Reply> =>
  stdout.trim().split("\n").map((line) => JSON.parse(line) as Reply)

const withContentLength = (body: string) => `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`

/** Replies framed with Content-Length headers, checked to be exactly that. */
const parseFramed = (stdout: string): Array<Reply> => {
  const replies: Array<Reply> = []
  let rest = Buffer.from(stdout)
  while (rest.length > 0) {
    const end = rest.indexOf("\r\n\r\n")
    assert.isAbove(end, 0, `a header block in ${rest.toString()}`)
    const match = /^Content-Length: (\d+)$/.exec(rest.subarray(0, end).toString())
    assert.isNotNull(match, rest.subarray(0, end).toString())
    const length = Number(match![1])
    replies.push(JSON.parse(rest.subarray(end + 4, end + 4 + length).toString()) as Reply)
    rest = rest.subarray(end + 4 + length)
  }
  return replies
}

const byId = (replies: ReadonlyArray<Reply>, id: number | string | null) => replies.filter((r) => r.id === id)

describe("FrameReader", () => {
  it("cuts lines, across chunks, and skips blank ones", () => {
    const reader = new FrameReader()
    assert.deepStrictEqual(reader.push(Buffer.from('\n {"a":1}\r\n{"b"')), [{
      _tag: "Message",
      text: '{"a":1}'
    }])
    assert.strictEqual(reader.framing, "lines")
    assert.deepStrictEqual(reader.push(Buffer.from(":2}\n\nnot json\n")), [
      { _tag: "Message", text: '{"b":2}' },
      { _tag: "Message", text: "not json" }
    ])
    assert.deepStrictEqual(reader.push(Buffer.from('{"c":3}')), [])
    assert.deepStrictEqual(reader.end(), [{ _tag: "Message", text: '{"c":3}' }])
  })

  it("a garbage first line is one malformed frame; JSON lines after it are read as lines", () => {
    const reader = new FrameReader()
    assert.deepStrictEqual(reader.push(Buffer.from('hello there\n{"a":1}\n')), [
      { _tag: "Malformed", reason: "a line that is neither a header nor a JSON message" },
      { _tag: "Message", text: '{"a":1}' }
    ])
    assert.strictEqual(reader.framing, "lines")
  })

  it("reads Content-Length frames byte-exact (multi-byte text too), and a header without length", () => {
    const reader = new FrameReader()
    const body = '{"text":"héllo ✓"}'
    const input = Buffer.from(`${withContentLength(body)}Content-Type: x\r\n\r\n${withContentLength("{}")}`)
    const frames = [...reader.push(input.subarray(0, 10)), ...reader.push(input.subarray(10))]
    assert.strictEqual(reader.framing, "content-length")
    assert.deepStrictEqual(frames, [
      { _tag: "Message", text: body },
      { _tag: "Malformed", reason: "a header block without Content-Length" },
      { _tag: "Message", text: "{}" }
    ])
  })
})

describe("serve mcp on bad input", () => {
  let stateDir: string
  beforeAll(async () => {
    stateDir = await makeStateDir(target)
  })
  afterAll(async () => {
    await removeStateDir(stateDir)
  })

  it("answers a line that is not JSON with -32700 (id null), then keeps serving", async () => {
    const { code, stdout } = await exchange(
      stateDir,
      lines(
        initialize,
        "this is not JSON {",
        { jsonrpc: "2.0", method: "notifications/initialized" },
        { jsonrpc: "2.0", id: 2, method: "tools/list" }
      )
    )
    assert.strictEqual(code, 0)
    const replies = parseLines(stdout)
    assert.strictEqual(byId(replies, 1)[0]?.result?.serverInfo?.name, "microagent", "initialize is answered")
    assert.strictEqual(byId(replies, null)[0]?.error?.code, -32700)
    assert.isAbove(byId(replies, 2)[0]?.result?.tools?.length ?? 0, 30, "tools/list after the bad line")
    assert.lengthOf(replies, 3)
  })

  it("answers invalid requests -32600, unknown methods -32601 with the caller's id, bad params -32602", async () => {
    const { code, stdout } = await exchange(
      stateDir,
      lines(
        initialize,
        { jsonrpc: "2.0", id: 2, method: "no/such/method" },
        { jsonrpc: "2.0", id: "three", method: "resources/nope", params: {} },
        { jsonrpc: "2.0", method: "notifications/unknown" },
        { jsonrpc: "1.0", id: 4, method: "tools/list" },
        { jsonrpc: "2.0", id: 5 },
        { jsonrpc: "2.0", id: 6, method: 42 },
        [],
        17,
        { jsonrpc: "2.0", id: 7, method: "tools/call", params: {} },
        { jsonrpc: "2.0", id: 8, method: "@effect/rpc/Interrupt", params: { requestId: "1" } },
        { jsonrpc: "2.0", id: "last", method: "ping" }
      )
    )
    assert.strictEqual(code, 0)
    const replies = parseLines(stdout)
    assert.strictEqual(byId(replies, 2)[0]?.error?.code, -32601)
    assert.strictEqual(byId(replies, "three")[0]?.error?.code, -32601, "a string id comes back as sent")
    assert.strictEqual(byId(replies, 4)[0]?.error?.code, -32600)
    assert.strictEqual(byId(replies, 5)[0]?.error?.code, -32600)
    assert.strictEqual(byId(replies, 6)[0]?.error?.code, -32600)
    assert.deepStrictEqual(byId(replies, null).map((r) => r.error?.code), [-32600, -32600], "[] and 17")
    assert.strictEqual(byId(replies, 7)[0]?.error?.code, -32602)
    assert.include(byId(replies, 7)[0]?.error?.message ?? "", "name")
    assert.strictEqual(byId(replies, 8)[0]?.error?.code, -32601, "no way into the RPC library's own messages")
    assert.deepStrictEqual(byId(replies, "last")[0]?.result, {}, "still serving at the end")
    // Every request got exactly one reply; the unknown notification none.
    assert.lengthOf(replies, 11)
  })

  it("speaks Content-Length framing when the client does, and answers in it", async () => {
    const { code, stdout } = await exchange(
      stateDir,
      [
        withContentLength(JSON.stringify(initialize)),
        withContentLength("{not json"),
        withContentLength(JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" })),
        withContentLength(JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" })),
        withContentLength(JSON.stringify({ jsonrpc: "2.0", id: 3, method: "nope" })),
        withContentLength(
          JSON.stringify({
            jsonrpc: "2.0",
            id: 4,
            method: "tools/call",
            params: { name: "microagent.profiles" }
          })
        )
      ].join("")
    )
    assert.strictEqual(code, 0)
    const replies = parseFramed(stdout)
    assert.strictEqual(byId(replies, 1)[0]?.result?.serverInfo?.name, "microagent")
    assert.strictEqual(byId(replies, null)[0]?.error?.code, -32700)
    assert.isAbove(byId(replies, 2)[0]?.result?.tools?.length ?? 0, 30)
    assert.strictEqual(byId(replies, 3)[0]?.error?.code, -32601)
    assert.isFalse(byId(replies, 4)[0]?.result?.isError)
  })

  it("tools without arguments refuse unknown ones", async () => {
    const mcp = await connect(stateDir, target)
    try {
      for (
        const tool of [
          "microagent.profiles",
          "microagent.describe",
          "kernel.list",
          "doctor.check",
          "images.list",
          "volume.list",
          "network.list",
          "kernel.verify"
        ]
      ) {
        const refused = await mcp.call(tool, { bogus: 1 })
        assert.isFalse(refused.ok, tool)
        assert.strictEqual(refused.error?.kind, "permanent", tool)
        assert.isTrue(refused.error?.usage, tool)
        assert.include(refused.error?.message ?? "", "bogus", tool)
      }
      assert.isTrue((await mcp.call("microagent.profiles", {})).ok)
    } finally {
      await mcp.close()
    }
  })
})

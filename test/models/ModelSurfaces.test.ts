/**
 * The model store from the surfaces other than the CLI: MCP (a real MCP client driving `serve mcp`,
 * whose calls run in the runtime — a process without WebAssembly, so the store's HTTP must not need
 * `fetch`) and the Promise API's Host. Both against a loopback hub: a pull that resumes after a cut,
 * a refused digest that records nothing, list, inspect, a previewed and a real remove, prune; and a
 * runner served, answering a chat completion, listed and stopped.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { Host, MicroagentError } from "../../src/promise/index.ts"
import { connect, stopRuntime } from "../mcp/mcpClient.ts"
import { tinyGguf, tinyLlama } from "../support/gguf.ts"
import { type Hub, startHub } from "../support/hfHub.ts"

let hub: Hub
const dirs: Array<string> = []
const tempDir = (prefix: string) => {
  const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), prefix))
  dirs.push(dir)
  return dir
}

beforeAll(async () => {
  hub = await startHub()
  hub.token = "tok"
  hub.files.set("org/repo/main/m.gguf", { bytes: tinyGguf({ padTo: 256 * 1024 }) })
  hub.files.set("org/repo/main/wrong.gguf", { bytes: tinyGguf(), sha256: "ab".repeat(32) })
  hub.files.set("org/repo/main/llama.gguf", { bytes: tinyLlama() })
})
afterAll(async () => {
  await hub.close()
  for (const dir of dirs) NodeFs.rmSync(dir, { recursive: true, force: true })
})

describe("the model store over MCP", () => {
  it(
    "pulls (resuming a cut download), lists, inspects, previews and removes, prunes, serves and stops",
    async () => {
      const stateDir = tempDir("ma-model-mcp-")
      const mcp = await connect(stateDir, {
        backend: "fake",
        image: "alpine",
        env: { MICROAGENT_HF_ENDPOINT: hub.endpoint, HF_TOKEN: "tok", HUGGING_FACE_HUB_TOKEN: "" }
      })
      try {
        hub.cutNextAfter = 100 * 1024
        const cut = await mcp.call("models.pull", { ref: "hf.co/org/repo/m.gguf" })
        assert.isFalse(cut.ok)
        assert.strictEqual(cut.error?.kind, "transient", cut.error?.message)
        const pulled = await mcp.call("models.pull", { ref: "hf.co/org/repo/m.gguf" })
        assert.isTrue(pulled.ok, JSON.stringify(pulled.error))
        assert.strictEqual(pulled.result.ref, "hf.co/org/repo@main/m.gguf")
        assert.strictEqual(pulled.result.gguf.architecture, "llama")
        assert.match(hub.ranges.at(-1) ?? "", /^bytes=\d+-$/, "the second pull resumed with Range")

        const wrong = await mcp.call("models.pull", { ref: "hf.co/org/repo/wrong.gguf" })
        assert.strictEqual(wrong.error?.kind, "permanent")
        assert.include(wrong.error?.message, "refused")

        const listed = await mcp.call("models.list", {})
        assert.deepStrictEqual(listed.result.models.map((m: { ref: string }) => m.ref), [pulled.result.ref])
        const inspected = await mcp.call("models.inspect", { ref: "hf.co/org/repo/m.gguf" })
        assert.strictEqual(inspected.result.gguf.contextLength, 256)

        const preview = await mcp.call("models.remove", { ref: "hf.co/org/repo/m.gguf", preview: true })
        assert.strictEqual(preview.result.target, pulled.result.ref)
        assert.isTrue(NodeFs.existsSync(pulled.result.path), "a preview removes nothing")
        const removed = await mcp.call("models.remove", { ref: "hf.co/org/repo/m.gguf" })
        assert.isTrue(removed.ok, JSON.stringify(removed.error))
        assert.isFalse(NodeFs.existsSync(pulled.result.path))
        const missing = await mcp.call("models.inspect", { ref: "hf.co/org/repo/m.gguf" })
        assert.strictEqual(missing.error?.kind, "not_found")

        NodeFs.writeFileSync(NodePath.join(stateDir, "models", "partial", "sha256-half"), "x")
        const pruned = await mcp.call("models.prune", {})
        assert.deepStrictEqual(pruned.result, { partials: ["sha256-half"], blobs: [] })

        // A runner, started by the runtime.
        const llama = "hf.co/org/repo/llama.gguf"
        assert.isTrue((await mcp.call("models.pull", { ref: llama })).ok)
        const custom = await mcp.call("models.serve", { ref: llama, runner_command: "sh -c 'id'" })
        assert.isFalse(custom.ok, "an agent cannot choose the runner's command line")
        const served = await mcp.call("models.serve", { ref: llama, context_size: 128 })
        assert.isTrue(served.ok, JSON.stringify(served.error))
        assert.strictEqual(served.result.runner, "embedded")
        const chat = await fetch(`${served.result.url}/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ messages: [{ role: "user", content: "hi" }], max_tokens: 3, temperature: 0 })
        })
        assert.strictEqual(chat.status, 200)
        assert.isAbove(
          ((await chat.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens,
          0
        )
        const runners = await mcp.call("models.runners", {})
        assert.deepStrictEqual(runners.result.runners.map((r: { pid: number }) => r.pid), [served.result.pid])
        const stopped = await mcp.call("models.stop", { ref: llama })
        assert.strictEqual(stopped.result.pid, served.result.pid)
        assert.deepStrictEqual((await mcp.call("models.runners", {})).result.runners, [])
      } finally {
        await mcp.close()
        await stopRuntime(stateDir)
      }
    },
    120_000
  )
})

describe("the model store from the Promise API", () => {
  it("pulls, lists, removes, serves and stops, and rejects with typed errors", async () => {
    const saved = process.env.MICROAGENT_HF_ENDPOINT
    process.env.MICROAGENT_HF_ENDPOINT = hub.endpoint
    const host = Host.openTest({ home: tempDir("ma-model-promise-") })
    try {
      const denied = await host.pullModel("hf.co/org/repo/m.gguf", { token: "nope" }).catch((e: unknown) => e)
      assert.instanceOf(denied, MicroagentError)
      assert.strictEqual((denied as MicroagentError).kind, "policy_denied")
      const record = await host.pullModel("hf.co/org/repo/m.gguf", { token: "tok" })
      assert.match(record.digest, /^sha256:[0-9a-f]{64}$/)
      assert.deepStrictEqual((await host.models()).map((m) => m.ref), [record.ref])
      assert.strictEqual((await host.inspectModel(record.ref)).gguf.architecture, "llama")
      assert.strictEqual((await host.removeModel(record.ref)).ref, record.ref)
      const gone = await host.inspectModel(record.ref).catch((e: unknown) => e)
      assert.strictEqual((gone as MicroagentError).kind, "not_found")
      assert.deepStrictEqual(await host.pruneModels(), { partials: [], blobs: [] })

      const llama = await host.pullModel("hf.co/org/repo/llama.gguf", { token: "tok" })
      const runner = await host.serveModel(llama.ref, { contextSize: 128 })
      const listed = await (await fetch(`${runner.url}/models`)).json() as { data: Array<{ id: string }> }
      assert.deepStrictEqual(listed.data.map((m) => m.id), [llama.ref])
      assert.deepStrictEqual((await host.modelRunners()).map((r) => r.pid), [runner.pid])
      assert.strictEqual((await host.stopModel(llama.ref)).pid, runner.pid)
      assert.deepStrictEqual(await host.modelRunners(), [])
    } finally {
      await host.close()
      if (saved === undefined) delete process.env.MICROAGENT_HF_ENDPOINT
      else process.env.MICROAGENT_HF_ENDPOINT = saved
    }
  }, 60_000)

  it("model policies: validated and evaluated over MCP (inside the host roots only) and the Promise API", async () => {
    const stateDir = tempDir("ma-model-policy-")
    const roots = tempDir("ma-model-policy-roots-")
    const policy = NodePath.join(roots, "policy.json")
    NodeFs.writeFileSync(
      policy,
      JSON.stringify({
        schema_version: "microagent.model_policy.v1",
        default: "deny",
        rules: [{ id: "chat", effect: "allow", limits: { max_tokens: 64 } }]
      })
    )
    const outside = NodePath.join(tempDir("ma-model-policy-out-"), "policy.json")
    NodeFs.copyFileSync(policy, outside)
    const mcp = await connect(stateDir, { backend: "fake", image: "alpine" }, {
      args: ["--host-root", roots]
    })
    try {
      const valid = await mcp.call("models.policy.validate", { policy_file: policy })
      assert.isTrue(valid.ok, JSON.stringify(valid.error))
      assert.deepStrictEqual(valid.result.rules, ["chat"])
      const denied = await mcp.call("models.policy.evaluate", { policy_file: policy, max_tokens: 65 })
      assert.strictEqual(denied.result.decision, "deny")
      assert.match(denied.result.reason, /max_tokens 65 is over the limit 64/)
      const expected = await mcp.call("models.policy.evaluate", {
        policy_file: policy,
        max_tokens: 65,
        expect: "allow"
      })
      assert.strictEqual(expected.error?.kind, "permanent")
      const confined = await mcp.call("models.policy.validate", { policy_file: outside })
      assert.isFalse(confined.ok)
      assert.strictEqual(confined.error?.kind, "policy_denied", JSON.stringify(confined.error))
    } finally {
      await mcp.close()
      stopRuntime(stateDir)
    }

    const host = Host.openTest({ home: tempDir("ma-model-policy-promise-") })
    try {
      assert.strictEqual((await host.evaluateModelPolicy(policy, { maxTokens: 10 })).decision, "allow")
      const bad = NodePath.join(roots, "bad.json")
      NodeFs.writeFileSync(bad, "{}")
      const error = await host.validateModelPolicy(bad).catch((e: unknown) => e)
      assert.instanceOf(error, MicroagentError)
      assert.include((error as MicroagentError).message, "schema_version")
    } finally {
      await host.close()
    }
  })
})

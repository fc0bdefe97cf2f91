/**
 * `model serve|runners|stop` through the bundled CLI with real runners: a tiny llama model written by
 * the tests (random weights) pulled from the loopback hub and served by the embedded llama.cpp runner
 * (node-llama-cpp): `/v1/models`, a chat completion, a streamed one and a plain completion; a runner
 * killed behind our back dropped and started again by the next serve; a custom runner template; stop.
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { binPath, cliAsync, errorOf } from "../support/cli.ts"
import { tinyLlama } from "../support/gguf.ts"
import { type Hub, startHub } from "../support/hfHub.ts"

let hub: Hub
let stateDir: string
const ref = "hf.co/org/tiny/llama.gguf"
const run = (...args: Array<string>) =>
  cliAsync(args, {
    stateDir,
    env: { MICROAGENT_HF_ENDPOINT: hub.endpoint, HF_TOKEN: "", HUGGING_FACE_HUB_TOKEN: "" }
  })
const ok = async (...args: Array<string>) => {
  const result = await run(...args, "--json")
  assert.strictEqual(result.code, 0, `${args.join(" ")}: ${result.stderr}`)
  return JSON.parse(result.stdout)
}
/** Running (a zombie waiting for its reaper counts as gone). */
const alive = (pid: number) => {
  try {
    const stat = NodeFs.readFileSync(`/proc/${pid}/stat`, "utf8")
    return !["Z", "X"].includes(stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3))
  } catch {
    return false
  }
}
const post = async (url: string, body: unknown) => {
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body)
  })
  return { status: response.status, text: await response.text() }
}

beforeAll(async () => {
  hub = await startHub()
  hub.files.set("org/tiny/main/llama.gguf", { bytes: tinyLlama() })
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-model-runners-"))
  await ok("model", "pull", ref)
})
afterAll(async () => {
  for (const runner of (await ok("model", "runners")).runners as Array<{ pid: number }>) {
    process.kill(runner.pid, "SIGKILL")
  }
  await hub.close()
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("model runners", () => {
  it("serves a pulled model with the OpenAI-compatible API, streaming included", async () => {
    const served = await ok("model", "serve", ref, "--ctx", "256")
    assert.strictEqual(served.runner, "embedded")
    assert.strictEqual(served.ref, "hf.co/org/tiny@main/llama.gguf")
    assert.match(served.url, /^http:\/\/127\.0\.0\.1:\d+\/v1$/)
    const record = NodeFs.readdirSync(NodePath.join(stateDir, "run", "models")).find((f) =>
      f.endsWith(".json")
    )!
    assert.strictEqual(NodeFs.statSync(NodePath.join(stateDir, "run", "models", record)).mode & 0o777, 0o600)

    const models = await (await fetch(`${served.url}/models`)).json() as { data: Array<{ id: string }> }
    assert.deepStrictEqual(models.data.map((m) => m.id), [served.ref])

    const chat = await post(`${served.url}/chat/completions`, {
      model: served.ref,
      messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "Say hello!" }],
      max_tokens: 6,
      // Greedy: random weights may sample end-of-text first, which is a completion of 0 tokens.
      temperature: 0
    })
    assert.strictEqual(chat.status, 200, chat.text)
    const answer = JSON.parse(chat.text)
    assert.strictEqual(answer.object, "chat.completion")
    assert.strictEqual(answer.choices[0].message.role, "assistant")
    assert.isAbove(answer.usage.completion_tokens, 0)
    assert.isAtMost(answer.usage.completion_tokens, 6)

    const streamed = await post(`${served.url}/chat/completions`, {
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 4,
      stream: true
    })
    const events = streamed.text.split("\n\n").filter((e) => e.startsWith("data: ")).map((e) => e.slice(6))
    assert.strictEqual(events.at(-1), "[DONE]")
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e))
    assert.isTrue(chunks.every((c) => c.object === "chat.completion.chunk"))
    assert.strictEqual(chunks.at(-1).choices[0].finish_reason !== null, true)

    const completion = await post(`${served.url}/completions`, { prompt: "abc", max_tokens: 3 })
    assert.strictEqual(JSON.parse(completion.text).object, "text_completion")
    const bad = await post(`${served.url}/completions`, { prompt: 5 })
    assert.strictEqual(bad.status, 400)

    const again = await ok("model", "serve", ref)
    assert.strictEqual(again.pid, served.pid, "a live runner is reused")
    assert.deepStrictEqual((await ok("model", "runners")).runners.map((r: { pid: number }) => r.pid), [
      served.pid
    ])
  }, 180_000)

  it("drops a runner killed behind its back and starts it again on the next serve", async () => {
    const before = await ok("model", "serve", ref, "--ctx", "256")
    process.kill(before.pid, "SIGKILL")
    for (let i = 0; i < 50 && alive(before.pid); i++) await new Promise((r) => setTimeout(r, 100))
    assert.deepStrictEqual((await ok("model", "runners")).runners, [])
    const after = await ok("model", "serve", ref, "--ctx", "256")
    assert.notStrictEqual(after.pid, before.pid)
    assert.strictEqual((await fetch(`${after.url}/models`)).status, 200)
    // A model deleted while served: its runner is still found and stopped by the reference.
    await ok("model", "delete", ref)
    const stopped = await ok("model", "stop", ref)
    assert.strictEqual(stopped.pid, after.pid)
    await ok("model", "pull", ref)
    assert.isFalse(alive(after.pid))
    assert.strictEqual(errorOf(await run("model", "stop", ref, "--json")).error.kind, "not_found")
  }, 180_000)

  it("runs a custom runner command template", async () => {
    const script = NodePath.join(NodePath.dirname(binPath), "microagent-model-runner.mjs")
    const served = await ok(
      "model",
      "serve",
      ref,
      "--runner",
      "custom",
      "--runner-command",
      `'${process.execPath}' ${script} --model {model} --id custom-{port} --port {port} --ctx`,
      "--runner-arg",
      "128"
    )
    assert.strictEqual(served.runner, "custom")
    const models = await (await fetch(`${served.url}/models`)).json() as { data: Array<{ id: string }> }
    assert.deepStrictEqual(models.data.map((m) => m.id), [`custom-${served.port}`])
    assert.deepStrictEqual(served.command.slice(-2), ["--ctx", "128"])
    await ok("model", "stop", ref)
    const missing = await run("model", "serve", ref, "--runner", "custom", "--json")
    assert.strictEqual(errorOf(missing).error.kind, "permanent")
    assert.include(errorOf(missing).error.message, "--runner-command")
  }, 180_000)

  it(
    "serve --dedicated starts a runner of its own each time; stop ends every runner of the model",
    async () => {
      const shared = await ok("model", "serve", ref, "--ctx", "128")
      const first = await ok("model", "serve", ref, "--ctx", "128", "--dedicated")
      const second = await ok("model", "serve", ref, "--ctx", "128", "--dedicated")
      assert.isFalse(shared.dedicated)
      assert.isTrue(first.dedicated && second.dedicated)
      assert.strictEqual(new Set([shared.pid, first.pid, second.pid]).size, 3)
      assert.strictEqual(new Set([shared.port, first.port, second.port]).size, 3)
      // A plain serve finds the shared runner, never a dedicated one.
      assert.strictEqual((await ok("model", "serve", ref)).pid, shared.pid)
      const listed = (await ok("model", "runners")).runners as Array<
        { pid: number; dedicated: boolean; pinned: boolean }
      >
      assert.deepStrictEqual(listed.map((r) => r.pid).sort(), [shared.pid, first.pid, second.pid].sort())
      const text = await cliAsync(["model", "runners"], {
        stateDir,
        env: { MICROAGENT_HF_ENDPOINT: hub.endpoint, MICROAGENT_OUTPUT: "text" }
      })
      assert.strictEqual(text.stdout.split("\n").filter((l) => l.includes("\tdedicated")).length, 2)
      await ok("model", "stop", ref)
      assert.deepStrictEqual((await ok("model", "runners")).runners, [])
      for (const pid of [shared.pid, first.pid, second.pid]) assert.isFalse(alive(pid))
    },
    180_000
  )

  it(
    "an interrupted serve (Ctrl-C before the runner answers) ends the runner and leaves no record",
    async () => {
      const dir = NodePath.join(stateDir, "run", "models")
      const child = NodeChild.spawn(process.execPath, [
        binPath,
        "model",
        "serve",
        ref,
        "--runner",
        "custom",
        "--runner-command",
        "sleep 300"
      ], {
        env: { ...process.env, MICROAGENT_HOME: stateDir, MICROAGENT_HF_ENDPOINT: hub.endpoint },
        stdio: "ignore"
      })
      const recordOf = () =>
        NodeFs.existsSync(dir)
          ? NodeFs.readdirSync(dir).filter((f) => f.endsWith(".json")).map((f) =>
            JSON.parse(NodeFs.readFileSync(NodePath.join(dir, f), "utf8")) as { pid: number; runner: string }
          ).find((r) => r.runner === "custom")
          : undefined
      const deadline = Date.now() + 60_000
      while (recordOf() === undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))
      const record = recordOf()!
      assert.isTrue(alive(record.pid))
      const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)))
      child.kill("SIGINT")
      assert.strictEqual(await exited, 130)
      assert.isUndefined(recordOf())
      assert.isFalse(alive(record.pid))
    },
    180_000
  )
})

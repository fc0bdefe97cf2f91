/**
 * `microagent model …` through the bundled CLI against a loopback hub: pull, list and inspect with
 * --json, delete, prune, and a malformed reference's usage exit.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { cliAsync, errorOf } from "../support/cli.ts"
import { tinyGguf } from "../support/gguf.ts"
import { type Hub, startHub } from "../support/hfHub.ts"

let hub: Hub
let stateDir: string
const run = (...args: Array<string>) =>
  cliAsync(args, {
    stateDir,
    env: { MICROAGENT_HF_ENDPOINT: hub.endpoint, HF_TOKEN: "", HUGGING_FACE_HUB_TOKEN: "" }
  })

beforeAll(async () => {
  hub = await startHub()
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-model-cli-"))
})
afterAll(async () => {
  await hub.close()
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("microagent model", () => {
  it("pulls, lists, inspects, deletes and prunes with --json", async () => {
    hub.token = "tok"
    hub.files.set("org/repo/main/m.gguf", { bytes: tinyGguf() })
    const denied = await run("model", "pull", "hf.co/org/repo/m.gguf", "--json")
    assert.strictEqual(errorOf(denied).error.kind, "policy_denied")
    const pulled = await run("model", "pull", "--token", "tok", "hf.co/org/repo/m.gguf", "--json")
    assert.strictEqual(pulled.code, 0, pulled.stderr)
    assert.notInclude(pulled.stdout + pulled.stderr, 'tok"')
    const record = JSON.parse(pulled.stdout) as { ref: string; gguf: { architecture: string } }
    assert.strictEqual(record.ref, "hf.co/org/repo@main/m.gguf")
    const listed = await run("model", "list", "--json")
    assert.deepStrictEqual(
      (JSON.parse(listed.stdout) as { models: Array<{ ref: string }> }).models.map((m) => m.ref),
      [
        record.ref
      ]
    )
    const inspected = await run("model", "inspect", "hf.co/org/repo/m.gguf", "--json")
    const info = JSON.parse(inspected.stdout) as { gguf: { architecture: string; contextLength: number } }
    assert.strictEqual(info.gguf.architecture, "llama")
    assert.strictEqual(info.gguf.contextLength, 256)
    const deleted = await run("model", "delete", "hf.co/org/repo/m.gguf", "--json")
    assert.deepStrictEqual(JSON.parse(deleted.stdout), { removed: record.ref })
    const pruned = await run("model", "prune", "--json")
    assert.deepStrictEqual(JSON.parse(pruned.stdout), { partials: [], blobs: [] })
    const gone = await run("model", "inspect", "hf.co/org/repo/m.gguf", "--json")
    assert.strictEqual(errorOf(gone).error.kind, "not_found")
  })

  it("exits 2 on a malformed reference, naming the problem", async () => {
    const bad = await run("model", "pull", "hf.co/org/repo/../m.gguf", "--json")
    assert.strictEqual(bad.code, 2)
    assert.include(errorOf(bad).error.message, "path segment")
  })
})

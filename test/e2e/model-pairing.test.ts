/**
 * Workspaces paired with a model, on real QEMU microVMs and the embedded llama.cpp runner: the tiny
 * llama model (random weights) from the loopback hub, reached from inside a guest with
 * `--network isolated` (no NIC at all) at $OPENAI_BASE_URL over the model channel.
 *
 * - `create --model` with policy mediation: the guest lists the model and gets a completion; a
 *   request over the policy's max_tokens is refused with 403 and audited without its prompt; the
 *   runner is held by the workspace (unpinned) and stops when it halts.
 * - `run --model` (no mediation): a one-shot guest reaches the model; the runner goes with the run.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { cliAsync, stopRuntime } from "../support/cli.ts"
import { tinyLlama } from "../support/gguf.ts"
import { type Hub, startHub } from "../support/hfHub.ts"

let hub: Hub
let stateDir: string
const ref = "hf.co/org/tiny/llama.gguf"
const canonical = "hf.co/org/tiny@main/llama.gguf"
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
const runners = async () =>
  (await ok("model", "runners")).runners as Array<
    { ref: string; pid: number; pinned: boolean; holders: Array<string> }
  >
/** Polls until `check` holds (the bridge lets go of a runner a moment after its VM stops). */
const eventually = async (check: () => Promise<boolean>, what: string, ms = 15_000) => {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await check()) return
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
  assert.fail(`timed out waiting for ${what}`)
}

/** A shell command in the workspace: its stdout (the exec's own exit code must be 0). */
const guest = async (script: string) => {
  const result = await ok("exec", "paired", "--", "sh", "-c", script)
  assert.strictEqual(result.result.exitCode, 0, JSON.stringify(result.result))
  return result.result.stdout as string
}

/** A POST from inside the guest with busybox wget; prints the body, or the HTTP error line. */
const guestPost = (path: string, body: unknown) =>
  `wget -q -O - --header 'Content-Type: application/json' --post-data '${JSON.stringify(body)}' `
  + `"$OPENAI_BASE_URL${path}" 2>&1; echo " exit=$?"`

beforeAll(async () => {
  hub = await startHub()
  hub.files.set("org/tiny/main/llama.gguf", { bytes: tinyLlama() })
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-model-pairing-"))
  await ok("model", "pull", ref)
})
afterAll(async () => {
  await run("delete", "--force", "paired")
  for (const runner of await runners().catch(() => [])) process.kill(runner.pid, "SIGKILL")
  stopRuntime(stateDir)
  await hub.close()
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("workspaces paired with a model", () => {
  it("create --model --network isolated with a policy: completions in the guest, the policy enforced and audited, the runner released on halt", async () => {
    const policy = NodePath.join(stateDir, "policy.json")
    NodeFs.writeFileSync(
      policy,
      JSON.stringify({
        schema_version: "microagent.model_policy.v1",
        default: "deny",
        rules: [
          { id: "list", effect: "allow", match: { methods: ["GET"], paths: ["/v1/models"] } },
          {
            id: "small-chats",
            effect: "allow",
            match: { paths: ["/v1/chat/completions"] },
            limits: { max_tokens: 8 }
          }
        ]
      })
    )
    const created = await ok(
      "create",
      "paired",
      "--model",
      ref,
      "--network",
      "isolated",
      "--model-mediation",
      "policy",
      "--model-policy-file",
      policy
    )
    assert.deepStrictEqual(created.model, { ref: canonical, mediation: "policy", policyFile: policy })
    await ok("start", "paired")
    // Warm: the template has the model channel, and the agent started its forwarder after the restore.
    const { events: startEvents } = await ok("events", "paired") as {
      events: Array<{ type: string; detail: string }>
    }
    assert.match(
      startEvents.find((e) => e.type === "warm")?.detail ?? "",
      /^restored template /,
      JSON.stringify(startEvents)
    )
    const [runner] = await runners()
    assert.strictEqual(runner?.ref, canonical)
    assert.strictEqual(runner?.pinned, false)
    assert.deepStrictEqual(runner?.holders, ["paired"])

    const env = await guest("echo $OPENAI_BASE_URL $MICROAGENT_MODEL_URL")
    assert.strictEqual(env.trim(), "http://127.0.0.1:11434/v1 http://127.0.0.1:11434/v1")
    assert.strictEqual((await guest("ls /sys/class/net")).trim(), "lo")

    const models = await guest('wget -q -O - "$OPENAI_BASE_URL/models"')
    assert.deepStrictEqual(JSON.parse(models).data.map((m: { id: string }) => m.id), [canonical])

    const secret = "zebra-marker-71"
    const allowed = await guest(
      guestPost("/chat/completions", {
        model: canonical,
        messages: [{ role: "user", content: `hi ${secret}` }],
        max_tokens: 4,
        // Greedy: random weights may sample end-of-text first, which is a completion of 0 tokens.
        temperature: 0
      })
    )
    assert.match(allowed, / exit=0$/m, allowed)
    const completion = JSON.parse(allowed.replace(/ exit=0\s*$/, ""))
    assert.strictEqual(completion.object, "chat.completion")
    assert.isAbove(completion.usage.completion_tokens, 0)

    const denied = await guest(
      guestPost("/chat/completions", {
        model: canonical,
        messages: [{ role: "user", content: `long ${secret}` }],
        max_tokens: 100
      })
    )
    assert.match(denied, /403/, denied)

    const audit = NodeFs.readFileSync(
      NodePath.join(stateDir, "workspaces", "paired", "model-audit.jsonl"),
      "utf8"
    )
    assert.notInclude(audit, secret, "the audit holds no prompt text")
    const decisions = audit.trim().split("\n").map((line) => JSON.parse(line)).filter((e) =>
      e.event === "decision"
    )
    assert.deepStrictEqual(
      decisions.map((d) => [d.path, d.decision, d.rule, d.status]),
      [
        ["/v1/models", "allow", "list", 200],
        ["/v1/chat/completions", "allow", "small-chats", 200],
        ["/v1/chat/completions", "deny", "small-chats", 403]
      ]
    )
    assert.strictEqual(decisions[2].max_tokens, 100)
    assert.match(decisions[2].reason, /max_tokens 100 is over the limit 8/)

    // The runner killed behind the bridge's back: the next request starts it again, on the same port.
    process.kill(runner!.pid, "SIGKILL")
    const again = await guest('wget -q -O - "$OPENAI_BASE_URL/models"')
    assert.deepStrictEqual(JSON.parse(again).data.map((m: { id: string }) => m.id), [canonical])
    const [restarted] = await runners()
    assert.notStrictEqual(restarted?.pid, runner!.pid)
    assert.deepStrictEqual(restarted?.holders, ["paired"])
    const events = NodeFs.readFileSync(
      NodePath.join(stateDir, "workspaces", "paired", "model-audit.jsonl"),
      "utf8"
    )
      .trim().split("\n").map((line) => JSON.parse(line).event)
    assert.includeMembers(events, ["mediator_start", "runner_restarted", "upstream_target_changed"])

    await ok("halt", "paired")
    await eventually(async () => (await runners()).length === 0, "the unpinned runner to stop")
    const recorded = await ok("events", "paired")
    const details = (recorded.events ?? recorded).map((e: { detail: string }) => e.detail).join("\n")
    assert.match(details, /model_worker=attached hf\.co\/org\/tiny@main\/llama\.gguf/)
    assert.match(details, /model_worker=released hf\.co\/org\/tiny@main\/llama\.gguf: runner pid \d+ stopped/)
  })

  it("run --model: a one-shot guest reaches the model without mediation; a held runner goes with the run, a pinned one stays (under egress mediation too)", async () => {
    const result = await run(
      "run",
      "--model",
      ref,
      "--network",
      "isolated",
      "--exec",
      'wget -q -O - "$OPENAI_BASE_URL/models"'
    )
    assert.strictEqual(result.code, 0, result.stderr + result.stdout)
    assert.include(result.stdout, canonical)
    await eventually(async () => (await runners()).length === 0, "the run's runner to stop")

    // Pinned by `model serve` before the run: the run holds it and lets go; it stays up. This run is on
    // the user network under egress mediation (the default), which the model channel does not go through.
    const pinned = await ok("model", "serve", ref)
    const second = await run(
      "run",
      "--model",
      ref,
      "--exec",
      'wget -q -O - "$OPENAI_BASE_URL/models"'
    )
    assert.strictEqual(second.code, 0, second.stderr + second.stdout)
    const [kept] = await runners()
    assert.strictEqual(kept?.pid, pinned.pid)
    assert.strictEqual(kept?.pinned, true)
    assert.deepStrictEqual(kept?.holders, [])
    await ok("model", "stop", ref)
  })

  it("refuses mediation flags without a model, and a policy file that is not valid", async () => {
    const alone = await run("create", "nomodel", "--model-mediation", "local-allow", "--json")
    assert.strictEqual(alone.code, 2)
    assert.include(alone.stderr, "--model-mediation and --model-policy-file need --model REF")
    const bad = NodePath.join(stateDir, "bad-policy.json")
    NodeFs.writeFileSync(
      bad,
      JSON.stringify({ schema_version: "microagent.model_policy.v1", default: "maybe" })
    )
    const invalid = await run(
      "create",
      "badpolicy",
      "--model",
      ref,
      "--model-mediation",
      "policy",
      "--model-policy-file",
      bad
    )
    assert.notStrictEqual(invalid.code, 0)
    assert.include(invalid.stderr, "is not valid")
    assert.include((await run("list", "--json")).stdout.includes("badpolicy") ? "listed" : "absent", "absent")
  })
})

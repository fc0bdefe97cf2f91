/**
 * Paired model benchmark. Prints one JSON object on stdout: tokens per second of chat completions made
 * from inside a paired guest (`--network isolated`: over the model channel and the model bridge) against
 * the same requests made on the host directly to the runner, in the same run. The model is the tests'
 * tiny llama (random weights, served by the embedded llama.cpp runner). Each side makes BENCH_N
 * (default 5) requests of MAX_TOKENS (default 128) one after another; tokens are the runner's own
 * `usage.completion_tokens`, time the wall time of the requests: on the host measured by this process,
 * in the guest by the guest (`/proc/uptime` around the loop), so that neither includes `microagent exec`.
 * Both sides run alternately, twice, and the better of each is kept. Target: ratio >= 0.9.
 *
 * Run with `npm run bench -- model-pair` from the repository root after `npm run build` (it uses bin/).
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { tinyLlama } from "../test/support/gguf.ts"
import { startHub } from "../test/support/hfHub.ts"

const requests = Number(process.env.BENCH_N ?? 5)
const maxTokens = Number(process.env.MAX_TOKENS ?? 128)
const repo = process.env.MICROAGENT_REPO ?? process.cwd()
const bin = NodePath.join(repo, "bin/microagent.mjs")
const scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-model-pair-bench-"))
const log = (message: string) => process.stderr.write(`model-pair.bench: ${message}\n`)
const round = (x: number, digits = 2) => Number(x.toFixed(digits))

const main = async () => {
  const hub = await startHub()
  hub.files.set("org/tiny/main/llama.gguf", { bytes: tinyLlama() })
  const env = {
    ...process.env,
    MICROAGENT_HOME: NodePath.join(scratch, "home"),
    MICROAGENT_HF_ENDPOINT: hub.endpoint,
    HF_TOKEN: "",
    MICROAGENT_OUTPUT: "json"
  }
  const cli = (...args: Array<string>) =>
    new Promise<string>((resolve, reject) => {
      const child = NodeChild.spawn(process.execPath, [bin, ...args], {
        env,
        stdio: ["ignore", "pipe", "pipe"]
      })
      let out = ""
      let err = ""
      child.stdout.on("data", (d) => (out += d))
      child.stderr.on("data", (d) => (err += d))
      child.on("close", (code) =>
        code === 0 ? resolve(out) : reject(new Error(`${args.join(" ")}: ${err}${out}`)))
    })
  const ref = "hf.co/org/tiny/llama.gguf"
  try {
    await cli("model", "pull", ref)
    await cli("create", "bench", "--model", ref, "--network", "isolated")
    await cli("start", "bench")
    const runner =
      (JSON.parse(await cli("model", "runners")).runners as Array<{ url: string; ref: string }>)[0]!
    const body = JSON.stringify({
      model: runner.ref,
      messages: [{ role: "user", content: "Tell me a story." }],
      max_tokens: maxTokens,
      temperature: 0
    })

    const onHost = async () => {
      let tokens = 0
      const started = performance.now()
      for (let i = 0; i < requests; i++) {
        const response = await fetch(`${runner.url}/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body
        })
        tokens +=
          ((await response.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens
      }
      const seconds = (performance.now() - started) / 1000
      return { tokens, seconds }
    }
    const script = [
      `printf '%s' '${body}' > /tmp/body.json`,
      "read s _ < /proc/uptime",
      `for i in $(seq ${requests}); do`,
      '  wget -q -O - --header "Content-Type: application/json" --post-file /tmp/body.json '
      + '"$OPENAI_BASE_URL/chat/completions" > /tmp/out.$i || exit 1',
      "done",
      "read e _ < /proc/uptime",
      'echo "$s $e"',
      `cat $(for i in $(seq ${requests}); do echo /tmp/out.$i; done)`
    ].join("\n")
    const inGuest = async () => {
      const result = JSON.parse(await cli("exec", "bench", "--", "sh", "-c", script)).result as {
        exitCode: number
        stdout: string
        stderr: string
      }
      if (result.exitCode !== 0) throw new Error(`guest requests failed: ${result.stderr}`)
      const [times, ...answers] = result.stdout.split("\n")
      const [s, e] = times!.split(" ").map(Number)
      const tokens = answers.join("\n").match(/"completion_tokens":\s*(\d+)/g)!.reduce(
        (sum, m) => sum + Number(m.split(":")[1]),
        0
      )
      return { tokens, seconds: e! - s! }
    }
    const host: Array<number> = []
    const guest: Array<number> = []
    for (let round_ = 0; round_ < 2; round_++) {
      const h = await onHost()
      const g = await inGuest()
      host.push(h.tokens / h.seconds)
      guest.push(g.tokens / g.seconds)
      log(
        `round ${round_ + 1}: host ${h.tokens} tokens in ${round(h.seconds)} s, guest ${g.tokens} in ${
          round(g.seconds)
        } s`
      )
    }
    const hostRate = Math.max(...host)
    const guestRate = Math.max(...guest)
    process.stdout.write(
      JSON.stringify({
        bench: "model-pair",
        requests,
        max_tokens: maxTokens,
        host_tokens_per_s: round(hostRate, 1),
        guest_tokens_per_s: round(guestRate, 1),
        ratio: round(guestRate / hostRate),
        target: ">= 0.9"
      }) + "\n"
    )
  } finally {
    await cli("delete", "--force", "bench").catch(() => undefined)
    await hub.close()
    NodeFs.rmSync(scratch, { recursive: true, force: true })
  }
}

await main()

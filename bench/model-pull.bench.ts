/**
 * Model pull benchmark. Prints one JSON object on stdout: `microagent model pull` of a 100 MiB GGUF file
 * from a loopback hub (paths-info, the redirected download hashed while it streams, the header check,
 * fsync, the record), against `curl -L` of the same file from the same hub into a file, interleaved in
 * the same run, median of BENCH_N (default 3). Target: ratio <= 1.1.
 *
 * Run with `npm run bench -- model-pull` from the repository root after `npm run build` (it uses bin/).
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { tinyGguf } from "../test/support/gguf.ts"
import { startHub } from "../test/support/hfHub.ts"

const iterations = Number(process.env.BENCH_N ?? 3)
const repo = process.env.MICROAGENT_REPO ?? process.cwd()
const bin = NodePath.join(repo, "bin/microagent.mjs")
const scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-model-bench-"))
const log = (message: string) => process.stderr.write(`model-pull.bench: ${message}\n`)
const now = () => Number(process.hrtime.bigint()) / 1e6
const round = (x: number, digits = 2) => Number(x.toFixed(digits))
const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const fileBytes = 100 * 1024 * 1024

/** Runs a command asynchronously (the hub answers in this process) and returns its wall time in ms. */
const timed = (command: string, args: ReadonlyArray<string>, env: NodeJS.ProcessEnv) =>
  new Promise<number>((resolve, reject) => {
    const started = now()
    const child = NodeChild.spawn(command, [...args], { env, stdio: ["ignore", "ignore", "pipe"] })
    let stderr = ""
    child.stderr.on("data", (d) => (stderr += d))
    child.on(
      "close",
      (code) =>
        code === 0 ? resolve(now() - started) : reject(new Error(`${command} ${args.join(" ")}: ${stderr}`))
    )
  })

const main = async () => {
  NodeChild.execFileSync("curl", ["--version"], { stdio: "ignore" })
  const hub = await startHub()
  hub.files.set("org/bench/main/m.gguf", { bytes: tinyGguf({ padTo: fileBytes }) })
  const home = NodePath.join(scratch, "home")
  const env = { ...process.env, MICROAGENT_HOME: home, MICROAGENT_HF_ENDPOINT: hub.endpoint, HF_TOKEN: "" }
  const ref = "hf.co/org/bench/m.gguf"
  const curlOut = NodePath.join(scratch, "curl.gguf")
  const pulls: Array<number> = []
  const curls: Array<number> = []
  try {
    for (let i = 0; i < iterations; i++) {
      NodeFs.rmSync(curlOut, { force: true })
      curls.push(
        await timed("curl", ["-sfL", "-o", curlOut, `${hub.endpoint}/org/bench/resolve/main/m.gguf`], env)
      )
      pulls.push(await timed(process.execPath, [bin, "--json", "model", "pull", ref], env))
      await timed(process.execPath, [bin, "--json", "model", "delete", ref], env)
      log(`round ${i + 1}: pull ${round(pulls.at(-1)!, 0)} ms, curl ${round(curls.at(-1)!, 0)} ms`)
    }
    const pull = median(pulls)
    const curl = median(curls)
    process.stdout.write(
      `${
        JSON.stringify({
          bytes: fileBytes,
          iterations,
          pull_ms: round(pull, 0),
          curl_ms: round(curl, 0),
          pull_samples_ms: pulls.map((x) => round(x, 0)),
          curl_samples_ms: curls.map((x) => round(x, 0)),
          ratio: round(pull / curl),
          target: "ratio <= 1.1"
        })
      }\n`
    )
  } finally {
    await hub.close()
    NodeFs.rmSync(scratch, { recursive: true, force: true })
  }
}

await main()

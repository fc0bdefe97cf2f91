/**
 * cp benchmark on a real QEMU microVM (the built-in busybox image). Prints one JSON object on stdout:
 * the time to copy a 100 MiB file into a running workspace with `cp`, against `cat > FILE` fed the
 * same file as stdin straight over the guest channel (this process connected to the VM's agent socket,
 * no runtime in between), interleaved in the same run, best of BENCH_N (default 3). `cp` is measured
 * twice: as the RPC call the CLI makes to the runtime (the runtime reads the host file itself), and as
 * the whole CLI command (which adds a node process start). Target: rpc ratio <= 1.2.
 *
 * Run with `npm run bench -- cp` from the repository root after `npm run build` (it uses bin/).
 */
import { Effect, Stream } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { ExecRequest } from "../src/domain/Exec.ts"
import { AgentChannel } from "../src/layers/guest/AgentChannel.ts"
import { MicroagentClient } from "../src/rpc/Client.ts"
import { GuestChannel, GuestRemoteError } from "../src/services/GuestChannel.ts"

const iterations = Number(process.env.BENCH_N ?? 3)
const repo = process.env.MICROAGENT_REPO ?? process.cwd()
const bin = NodePath.join(repo, "bin/microagent.mjs")
const stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-cp-bench-"))
const log = (message: string) => process.stderr.write(`cp.bench: ${message}\n`)
const now = () => Number(process.hrtime.bigint()) / 1e6
const round = (x: number, digits = 2) => Number(x.toFixed(digits))
const fileBytes = 100 * 1024 * 1024
const name = "cpbench"

const env = {
  ...process.env,
  MICROAGENT_HOME: stateDir,
  MICROAGENT_BACKEND: "qemu",
  MICROAGENT_RUNTIME_IDLE_SECONDS: "600"
}
const ma = (args: ReadonlyArray<string>) => {
  const result = NodeChild.spawnSync(process.execPath, [bin, "--json", ...args], { env, encoding: "utf8" })
  if (result.status !== 0) throw new Error(`microagent ${args.join(" ")} failed: ${result.stderr}`)
  return result.stdout
}

const stopRuntime = () => {
  const pidFile = NodePath.join(stateDir, "run", "runtime.pid")
  if (!NodeFs.existsSync(pidFile)) return
  const pid = Number(NodeFs.readFileSync(pidFile, "utf8").split(" ")[0])
  try {
    process.kill(pid, "SIGTERM")
  } catch {
    return
  }
  for (let i = 0; i < 400; i++) {
    try {
      process.kill(pid, 0)
    } catch {
      return
    }
    NodeChild.spawnSync("sleep", ["0.025"])
  }
  throw new Error("the runtime did not exit")
}

const source = NodePath.join(stateDir, "payload.bin")
const expectedSum = (() => {
  NodeFs.writeFileSync(source, NodeCrypto.randomBytes(fileBytes))
  return NodeCrypto.createHash("sha256").update(NodeFs.readFileSync(source)).digest("hex")
})()

const program = Effect.gen(function*() {
  ma(["create", "--size-mib", "1024", name])
  ma(["start", name])
  const checkSum = (path: string) => {
    const out = JSON.parse(ma(["exec", name, "--", "sha256sum", path]))
    if (!out.result.stdout.startsWith(expectedSum)) throw new Error(`${path} arrived corrupted`)
    ma(["exec", name, "--", "rm", "-f", path])
  }

  const cli = () => {
    const t = now()
    ma(["cp", source, `${name}:/root/cli.bin`])
    return now() - t
  }
  const rpc = Effect.gen(function*() {
    const client = yield* MicroagentClient
    const t = now()
    yield* client.cp({ name, direction: "in", hostPath: source, guestPath: "/root/rpc.bin" })
    return now() - t
  }).pipe(Effect.provide(MicroagentClient.layer({ socket: NodePath.join(stateDir, "run", "runtime.sock") })))
  const raw = Effect.scoped(Effect.gen(function*() {
    const channel = yield* GuestChannel
    const t = now()
    const connection = yield* channel.connect({
      _tag: "UnixSocket",
      path: NodePath.join(stateDir, "run", name, "agent.sock")
    }, { timeout: "10 seconds" })
    const stdin = Stream.fromAsyncIterable(
      NodeFs.createReadStream(source, { highWaterMark: 1024 * 1024 }),
      (cause) => new GuestRemoteError({ message: String(cause) })
    )
    const result = yield* connection.exec(
      new ExecRequest({ argv: ["sh", "-c", "cat > /root/raw.bin"] }),
      stdin
    )
    if (result.exitCode !== 0) {
      return yield* Effect.dieMessage(`cat exited ${result.exitCode}: ${result.stderr}`)
    }
    return now() - t
  }))

  const samples = { cli: [] as Array<number>, rpc: [] as Array<number>, raw: [] as Array<number> }
  for (let i = 0; i < iterations; i++) {
    samples.cli.push(cli())
    checkSum("/root/cli.bin")
    samples.rpc.push(yield* rpc)
    checkSum("/root/rpc.bin")
    // Only one client may hold the VM's channel: the runtime steps aside for the raw measurement.
    stopRuntime()
    samples.raw.push(yield* raw)
    checkSum("/root/raw.bin")
    log(
      `round ${i + 1}: cli ${Math.round(samples.cli.at(-1)!)} ms, rpc ${
        Math.round(samples.rpc.at(-1)!)
      } ms, raw ${Math.round(samples.raw.at(-1)!)} ms`
    )
  }
  const best = (xs: Array<number>) => Math.min(...xs)
  const rpcRatio = best(samples.rpc) / best(samples.raw)
  return {
    benchmark: "cp",
    file_bytes: fileBytes,
    iterations,
    raw_cat_ms: round(best(samples.raw), 1),
    cp_rpc_ms: round(best(samples.rpc), 1),
    cp_cli_ms: round(best(samples.cli), 1),
    cp_rpc_vs_raw_ratio: round(rpcRatio),
    cp_cli_vs_raw_ratio: round(best(samples.cli) / best(samples.raw)),
    samples: {
      raw: samples.raw.map(Math.round),
      rpc: samples.rpc.map(Math.round),
      cli: samples.cli.map(Math.round)
    },
    targets: { cp_rpc_vs_raw_ratio: 1.2 },
    ok: rpcRatio <= 1.2
  }
})

const cleanup = () => {
  try {
    ma(["delete", "--force", name])
  } catch {
    // Best effort.
  }
  stopRuntime()
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
}

Effect.runPromise(program.pipe(Effect.provide(AgentChannel.layer))).then(
  (result) => {
    cleanup()
    process.stdout.write(JSON.stringify(result) + "\n")
    process.exit(0)
  },
  (error) => {
    cleanup()
    process.stderr.write(`cp bench failed: ${error}\n`)
    process.exit(1)
  }
)

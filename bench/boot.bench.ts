/**
 * Boot benchmark. Prints one JSON object on stdout: the median wall time of N cycles through the
 * qemu layer (launch -> guest agent answers -> halt -> VMM gone) against raw QEMU with the very same
 * arguments, kernel, initramfs and rootfs, started in the foreground and told to power off at once
 * (a hand-written HELLO + SHUTDOWN on the agent socket), interleaved in the same run. Target ratio
 * <= 1.25.
 *
 * Bundle with esbuild (`--bundle --platform=node --format=esm --packages=external`) and run with
 * node from the repository root (BENCH_N sets the iterations, default 7).
 */
import * as FetchHttpClient from "@effect/platform/FetchHttpClient"
import { Effect, Layer } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeNet from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { AgentChannel } from "../src/layers/guest/AgentChannel.ts"
import { hostTscKhz } from "../src/layers/hypervisor/qemu/internal/accel.ts"
import { qemuArgs, runtimePaths } from "../src/layers/hypervisor/qemu/internal/args.ts"
import { QemuHypervisor } from "../src/layers/hypervisor/qemu/Qemu.ts"
import { FileKernelCache } from "../src/layers/kernel/FileKernelCache.ts"
import { Home } from "../src/services/Home.ts"
import { Hypervisor, LaunchConfig } from "../src/services/Hypervisor.ts"
import { KernelCache } from "../src/services/KernelCache.ts"

const iterations = Number(process.env.BENCH_N ?? 7)
const repo = process.env.MICROAGENT_REPO ?? process.cwd()
const stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-boot-bench-"))
const log = (message: string) => process.stderr.write(`boot.bench: ${message}\n`)

const median = (xs: ReadonlyArray<number>) => {
  const sorted = [...xs].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}
const summary = (xs: ReadonlyArray<number>) => ({
  median: Math.round(median(xs)),
  min: Math.round(Math.min(...xs)),
  max: Math.round(Math.max(...xs)),
  samples: xs.map(Math.round)
})

const agentPath = () => {
  // Its output goes to stderr: stdout carries only the JSON result.
  NodeChild.execFileSync("make", ["-s", "-C", NodePath.join(repo, "guest")], { stdio: ["ignore", 2, 2] })
  return NodePath.join(repo, "guest/build/microagent-agent")
}

const makeRootfs = (image: string) => {
  const tree = `${image}.tree`
  NodeFs.mkdirSync(NodePath.join(tree, "bin"), { recursive: true })
  for (const dir of ["proc", "sys", "dev", "tmp", "run", "etc"]) NodeFs.mkdirSync(NodePath.join(tree, dir))
  NodeFs.copyFileSync("/bin/busybox", NodePath.join(tree, "bin/busybox"))
  NodeFs.symlinkSync("busybox", NodePath.join(tree, "bin/sh"))
  NodeChild.execFileSync("mke2fs", [
    "-q",
    "-F",
    "-t",
    "ext4",
    "-E",
    "root_owner=0:0",
    "-d",
    tree,
    image,
    "32M"
  ])
  return image
}

/** HELLO (version 1) then SHUTDOWN (power off, no grace) as raw frames of docs/protocol.md. */
const helloAndShutdown = () => {
  const frame = (type: number, stream: number, payload: Buffer) => {
    const header = Buffer.alloc(12)
    header.write("MA", 0, "latin1")
    header.writeUInt8(type, 2)
    header.writeUInt32LE(stream, 4)
    header.writeUInt32LE(payload.length, 8)
    return Buffer.concat([header, payload])
  }
  const tlv = (tag: number, value: Buffer) => {
    const head = Buffer.alloc(6)
    head.writeUInt16LE(tag, 0)
    head.writeUInt32LE(value.length, 2)
    return Buffer.concat([head, value])
  }
  const u32 = (n: number) => {
    const b = Buffer.alloc(4)
    b.writeUInt32LE(n, 0)
    return b
  }
  return Buffer.concat([
    frame(0x01, 0, Buffer.concat([tlv(1, u32(1)), tlv(5, u32(256 * 1024))])),
    frame(0x40, 1, Buffer.concat([tlv(1, Buffer.from([0])), tlv(2, u32(0))]))
  ])
}

/** Raw QEMU in the foreground: start, connect, ask for power-off, wait for exit. */
const rawBoot = (args: ReadonlyArray<string>, agentSocket: string) =>
  new Promise<number>((resolve, reject) => {
    const started = performance.now()
    const child = NodeChild.spawn("qemu-system-x86_64", [...args], { stdio: ["ignore", "ignore", "inherit"] })
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error("raw QEMU boot took over 60 s"))
    }, 60_000)
    child.on("exit", () => {
      clearTimeout(timer)
      resolve(performance.now() - started)
    })
    const connect = () => {
      const socket = NodeNet.createConnection({ path: agentSocket })
      socket.on("connect", () => socket.write(helloAndShutdown()))
      socket.on("data", () => {})
      socket.on("error", () => setTimeout(connect, 5))
    }
    connect()
  })

const program = Effect.gen(function*() {
  const boot = yield* Effect.flatMap(KernelCache, (cache) => cache.ensure("x86_64")).pipe(
    Effect.provide(
      FileKernelCache.layer({ agentPath: agentPath() }).pipe(
        Layer.provide(Layer.mergeAll(Home.layer(stateDir), FetchHttpClient.layer))
      )
    )
  )
  const rootfs = makeRootfs(NodePath.join(stateDir, "root.ext4"))
  const hypervisor = yield* Hypervisor
  const config = (name: string) =>
    new LaunchConfig({
      workspace: name,
      runtimeDir: NodePath.join(stateDir, "run", name),
      rootfsPath: rootfs,
      kernelPath: boot.kernelPath,
      initrdPath: boot.initrdPath,
      memoryMiB: 256,
      cpus: 1,
      hostname: name,
      network: "isolated",
      bootTimeoutSeconds: 60
    })
  const rawDir = NodePath.join(stateDir, "run", "raw")
  NodeFs.mkdirSync(rawDir, { recursive: true, mode: 0o700 })
  const rawPaths = runtimePaths(rawDir)
  // Exactly the layer's arguments (its accelerator and TSC choice included), minus detaching.
  const layerArgs = qemuArgs({
    workspace: "raw",
    machine: "microvm",
    accel: "tcg",
    tscKhz: hostTscKhz(),
    kernelPath: boot.kernelPath,
    initrdPath: boot.initrdPath,
    rootfsPath: rootfs,
    memoryMiB: 256,
    cpus: 1,
    hostname: "raw",
    network: "isolated",
    ports: [],
    disks: [],
    paths: rawPaths
  })
  const pidAt = layerArgs.indexOf("-pidfile")
  const rawArgs = layerArgs.filter((arg, i) => arg !== "-daemonize" && i !== pidAt && i !== pidAt + 1)

  const layerTimes: Array<number> = []
  const rawTimes: Array<number> = []
  // One warm-up of each (page cache, host verdict file), then interleaved samples.
  for (let i = -1; i < iterations; i++) {
    const started = performance.now()
    const handle = yield* hypervisor.launch(config(`b${i + 1}`))
    yield* hypervisor.halt(handle, 30)
    const layerMs = performance.now() - started
    const rawMs = yield* Effect.promise(() => rawBoot(rawArgs, rawPaths.agentSocket))
    if (i >= 0) {
      layerTimes.push(layerMs)
      rawTimes.push(rawMs)
    }
    log(`${i < 0 ? "warm-up" : `#${i + 1}`}: layer ${layerMs.toFixed(0)} ms, raw ${rawMs.toFixed(0)} ms`)
  }
  const result = {
    bench: "boot",
    iterations,
    accel: JSON.parse(NodeFs.readFileSync(NodePath.join(stateDir, "qemu-host.json"), "utf8")).kvm
      ? "kvm"
      : "tcg",
    kernel: boot.kernelVersion,
    initramfs_bytes: NodeFs.statSync(boot.initrdPath).size,
    layer_ms: summary(layerTimes),
    raw_qemu_ms: summary(rawTimes),
    ratio: Number((median(layerTimes) / median(rawTimes)).toFixed(3)),
    target_ratio: 1.25
  }
  process.stdout.write(`${JSON.stringify(result)}\n`)
}).pipe(
  Effect.provide(
    QemuHypervisor.layer().pipe(Layer.provide(AgentChannel.layer), Layer.provide(Home.layer(stateDir)))
  ),
  Effect.ensuring(Effect.sync(() => NodeFs.rmSync(stateDir, { recursive: true, force: true })))
)

Effect.runPromise(program).catch((error) => {
  process.stderr.write(`boot.bench failed: ${String(error)}\n`)
  process.exit(1)
})

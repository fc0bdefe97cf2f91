/**
 * Helpers shared by the benches that drive the real CLI (bin/microagent.mjs, built by `npm run bench`)
 * on QEMU: a private state directory, CLI calls timed from spawn to exit, and raw QEMU booted with the
 * very arguments the CLI's VMM got (read from /proc), on a copy of the same root filesystem.
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeNet from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"

export const repo = process.env.MICROAGENT_REPO ?? process.cwd()
export const bin = NodePath.join(repo, "bin/microagent.mjs")

export const log = (bench: string, message: string) => process.stderr.write(`${bench}.bench: ${message}\n`)

export const median = (xs: ReadonlyArray<number>) => {
  const sorted = [...xs].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}
export const percentile = (xs: ReadonlyArray<number>, p: number) => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!
}
export const summary = (xs: ReadonlyArray<number>) => ({
  median: Math.round(median(xs)),
  min: Math.round(Math.min(...xs)),
  max: Math.round(Math.max(...xs)),
  samples: xs.map(Math.round)
})
export const loadAverage = () => NodeOs.loadavg().map((x) => Number(x.toFixed(2)))

export const stateDir = (prefix: string) =>
  NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), `ma-${prefix}-bench-`))

export interface Timed {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
  readonly ms: number
}

/** Runs the CLI on `state`, timed from spawn to exit. */
export const cli = (state: string, args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  new Promise<Timed>((resolve) => {
    const started = performance.now()
    const child = NodeChild.spawn(process.execPath, [bin, ...args], {
      env: {
        ...process.env,
        MICROAGENT_HOME: state,
        MICROAGENT_BACKEND: "qemu",
        MICROAGENT_OUTPUT: "json",
        MICROAGENT_RUNTIME_IDLE_SECONDS: "120",
        ...env
      },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (d) => (stdout += d))
    child.stderr.on("data", (d) => (stderr += d))
    child.on(
      "close",
      (code) => resolve({ code: code ?? -1, stdout, stderr, ms: performance.now() - started })
    )
  })

export const must = async (state: string, args: ReadonlyArray<string>, env?: Record<string, string>) => {
  const result = await cli(state, args, env)
  if (result.code !== 0) {
    throw new Error(`microagent ${args.join(" ")} exited ${result.code}: ${result.stderr}`)
  }
  return result
}

/** Stops the state directory's runtime, if one runs. */
export const stopRuntime = (state: string) => {
  try {
    process.kill(
      Number(NodeFs.readFileSync(NodePath.join(state, "run", "runtime.pid"), "utf8").split(" ")[0]),
      "SIGTERM"
    )
  } catch {
    // None runs.
  }
}

/** Kills QEMU processes started for `state` and removes it. */
export const cleanup = (state: string) => {
  stopRuntime(state)
  for (const pid of NodeFs.readdirSync("/proc").filter((e) => /^\d+$/.test(e))) {
    try {
      const cmdline = NodeFs.readFileSync(`/proc/${pid}/cmdline`, "utf8")
      if (cmdline.includes("qemu-system") && cmdline.includes(state)) process.kill(Number(pid), "SIGKILL")
    } catch {
      // Gone.
    }
  }
  NodeFs.rmSync(state, { recursive: true, force: true })
}

export interface RawQemu {
  /** Arguments for QEMU in the foreground, `%DIR%` and `%ROOTFS%` standing for a run's own files. */
  readonly args: ReadonlyArray<string>
  /** A pristine copy of the image's root filesystem (before any boot). */
  readonly rootfs: string
}

/**
 * Boots a probe workspace through the CLI and takes its VMM's command line: the raw baseline gets the
 * same kernel, initramfs, append line, devices and rootfs content, minus detaching.
 */
export const probeRawQemu = async (state: string, createArgs: ReadonlyArray<string>): Promise<RawQemu> => {
  await must(state, ["create", ...createArgs, "probe"])
  const prepared = JSON.parse((await must(state, ["inspect", "probe"])).stdout).workspace
  const rootfs = NodePath.join(state, "raw-rootfs.pristine")
  NodeChild.execFileSync("cp", ["--sparse=always", "--reflink=auto", prepared.rootfsPath, rootfs])
  await must(state, ["start", "probe"])
  const running = JSON.parse((await must(state, ["inspect", "probe"])).stdout).workspace
  const argv = NodeFs.readFileSync(`/proc/${running.vm.pid}/cmdline`, "utf8").split("\0").filter((a) =>
    a !== ""
  )
  await must(state, ["delete", "--force", "probe"])
  const runtimeDir: string = running.runtimeDir
  const args: Array<string> = []
  for (let i = 1; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === "-daemonize") continue
    if (arg === "-pidfile") {
      i++
      continue
    }
    args.push(arg.split(running.rootfsPath).join("%ROOTFS%").split(runtimeDir).join("%DIR%"))
  }
  return { args, rootfs }
}

/** A private copy of the pristine rootfs and directory for one raw boot. */
export const rawInstance = (state: string, raw: RawQemu, id: string) => {
  const dir = NodePath.join(state, "raw", id)
  NodeFs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  const rootfs = NodePath.join(dir, "rootfs")
  NodeChild.execFileSync("cp", ["--sparse=always", "--reflink=auto", raw.rootfs, rootfs])
  return {
    args: raw.args.map((a) => a.split("%ROOTFS%").join(rootfs).split("%DIR%").join(dir)),
    agentSocket: NodePath.join(dir, "agent.sock"),
    reset: () => {
      for (const f of NodeFs.readdirSync(dir)) {
        if (f !== "rootfs") NodeFs.rmSync(NodePath.join(dir, f), { force: true })
      }
      NodeChild.execFileSync("cp", ["--sparse=always", "--reflink=auto", raw.rootfs, rootfs])
    }
  }
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

/** Raw QEMU in the foreground: start, wait for the agent, ask it to power off, wait for QEMU to exit. */
export const rawBoot = (instance: { readonly args: ReadonlyArray<string>; readonly agentSocket: string }) =>
  new Promise<number>((resolve, reject) => {
    const started = performance.now()
    const child = NodeChild.spawn("qemu-system-x86_64", [...instance.args], {
      stdio: ["ignore", "ignore", "inherit"]
    })
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error("raw QEMU boot took over 120 s"))
    }, 120_000)
    child.on("exit", () => {
      clearTimeout(timer)
      resolve(performance.now() - started)
    })
    let answered = false
    let exited = false
    child.on("exit", () => (exited = true))
    // What the host writes before the guest opens its port can be lost: without an answer within a
    // second, connect again and repeat (the agent takes a new HELLO on a new connection).
    const connect = () => {
      if (exited) return
      const socket = NodeNet.createConnection({ path: instance.agentSocket })
      let retry: ReturnType<typeof setTimeout> | undefined
      socket.on("connect", () => {
        socket.write(helloAndShutdown())
        retry = setTimeout(() => {
          if (answered || exited) return
          socket.destroy()
          connect()
        }, 1000)
      })
      socket.on("data", () => (answered = true))
      socket.on("error", () => {
        if (retry !== undefined) clearTimeout(retry)
        if (!answered) setTimeout(connect, 5)
      })
    }
    connect()
  })

/**
 * Test support: builds the guest agent once and runs it on the host in unix-socket mode.
 */
import { Effect } from "effect"
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import * as Net from "node:net"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { decodeMessage, frameBytes, type Message } from "../../src/layers/guest/internal/messages.ts"
import { FrameDecoder, WireError } from "../../src/layers/guest/internal/wire.ts"
import { GuestChannel, type GuestConnection } from "../../src/services/GuestChannel.ts"

export const guestDir = resolve(import.meta.dirname, "../../guest")
/** The static agent, or another build of it (`make -C guest asan`) named by the environment. */
export const agentBinary = process.env.MICROAGENT_AGENT_BINARY ?? join(guestDir, "build/microagent-agent")

const hasCompiler = () =>
  ["musl-gcc", "gcc", "cc"].some((cc) => {
    try {
      execFileSync("sh", ["-c", `command -v ${cc}`], { stdio: "ignore" })
      return true
    } catch {
      return false
    }
  })

/** `make -C guest`, failing loudly (never skipping) when the toolchain is missing. */
export const buildAgent = (): void => {
  if (!hasCompiler()) {
    throw new Error("no C compiler to build the guest agent: apt-get install musl-tools build-essential")
  }
  try {
    execFileSync("make", ["-s", "-C", guestDir], { stdio: "pipe" })
  } catch (e) {
    const err = e as { stderr?: Buffer; stdout?: Buffer }
    throw new Error(
      `make -C guest failed (needs musl-tools or build-essential):\n${err.stdout?.toString() ?? ""}${
        err.stderr?.toString() ?? ""
      }`
    )
  }
}

export interface RunningAgent {
  readonly dir: string
  readonly socket: string
  readonly secretsDir: string
  readonly process: ChildProcess
}

/** Starts `microagent-agent --listen-unix` in a fresh directory; killed when the scope closes. */
export const startAgent = (options: { readonly delayMs?: number; readonly dir?: string } = {}) =>
  Effect.acquireRelease(
    Effect.gen(function*() {
      const dir = options.dir ?? mkdtempSync(join(tmpdir(), "ma-agent-"))
      const socket = join(dir, "agent.sock")
      const secretsDir = join(dir, "secrets")
      if (options.delayMs) yield* Effect.sleep(options.delayMs)
      const child = spawn(agentBinary, ["--listen-unix", socket, "--secrets-dir", secretsDir], {
        stdio: ["ignore", "ignore", "inherit"]
      })
      return { dir, socket, secretsDir, process: child } satisfies RunningAgent
    }),
    (agent) =>
      Effect.sync(() => {
        agent.process.kill("SIGKILL")
        rmSync(agent.dir, { recursive: true, force: true })
      })
  )

/** An agent plus a handshaken connection to it. */
export const connectedAgent = Effect.gen(function*() {
  const agent = yield* startAgent()
  const channel = yield* GuestChannel
  const conn: GuestConnection = yield* channel.connect(
    { _tag: "UnixSocket", path: agent.socket },
    { timeout: "10 seconds" }
  )
  return { agent, conn }
})

/** A bare-bytes client, for feeding the agent frames the real client would never send. */
export class RawClient {
  private readonly decoder = new FrameDecoder()
  private readonly inbox: Array<{ stream: number; message: Message } | WireError> = []
  private waiters: Array<() => void> = []
  closed = false

  private constructor(private readonly socket: Net.Socket) {
    socket.on("data", (chunk: Buffer) => {
      for (const f of this.decoder.push(chunk)) {
        if (f instanceof WireError) this.inbox.push(f)
        else {
          const m = decodeMessage(f.type, f.payload)
          if (m._tag === "Right") this.inbox.push({ stream: f.stream, message: m.right })
        }
      }
      this.wake()
    })
    socket.on("close", () => {
      this.closed = true
      this.wake()
    })
    socket.on("error", () => {})
  }

  private wake() {
    const w = this.waiters
    this.waiters = []
    for (const f of w) f()
  }

  static connect(path: string): Promise<RawClient> {
    return new Promise((ok, ko) => {
      const s = Net.createConnection({ path }, () => ok(new RawClient(s)))
      s.once("error", ko)
    })
  }

  write(bytes: Uint8Array): void {
    this.socket.write(bytes)
  }

  send(stream: number, message: Message): void {
    this.write(frameBytes(stream, message))
  }

  /** The next frame on `stream` (others are kept), or undefined once the socket closed. */
  async next(stream: number, timeoutMs = 5000): Promise<Message | undefined> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const i = this.inbox.findIndex((f) => !(f instanceof WireError) && f.stream === stream)
      if (i >= 0) return (this.inbox.splice(i, 1)[0] as { message: Message }).message
      if (this.closed) return undefined
      if (Date.now() > deadline) throw new Error(`no frame on stream ${stream} within ${timeoutMs} ms`)
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(1, deadline - Date.now()))
        this.waiters.push(() => {
          clearTimeout(t)
          r()
        })
      })
    }
  }

  close(): void {
    this.socket.destroy()
  }
}

export const exists = existsSync
export const makeTempDir = () => mkdtempSync(join(tmpdir(), "ma-agent-"))

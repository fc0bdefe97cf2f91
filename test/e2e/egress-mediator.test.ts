/**
 * The egress mediator's own end, on the real binary and real network namespaces (no VM): it ends with
 * its VMM even when the VMM is left a zombie (an init that does not reap keeps a killed VMM's entry),
 * and it removes its namespace's name only while that name still names its own namespace: a later
 * start of the same workspace may have made a new one under it. Its resolver answers SERVFAIL for
 * what a silent upstream leaves unanswered.
 */
import * as NodeChild from "node:child_process"
import * as NodeDgram from "node:dgram"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { promisify } from "node:util"
import { afterEach, assert, beforeAll, describe, it } from "vitest"
import { requireTool } from "../support/kernel.ts"

const binary = NodePath.resolve("guest/build/microagent-egress")
const ns = `microagent-egress-test-${process.pid}`
const spawned: Array<NodeChild.ChildProcess> = []
let work: string

const execFile = promisify(NodeChild.execFile)
const ip = (...args: Array<string>) => NodeChild.execFileSync("ip", args, { encoding: "utf8" })

/** A fresh namespace under `ns` with the gateway on its loopback, as the mediator expects it. */
const makeNamespace = () => {
  ip("netns", "add", ns)
  ip("-n", ns, "link", "set", "lo", "up")
  ip("-n", ns, "addr", "add", "10.0.2.2/32", "dev", "lo")
  return NodeFs.statSync(`/run/netns/${ns}`).ino
}

const stateOf = (pid: number) => {
  try {
    const stat = NodeFs.readFileSync(`/proc/${pid}/stat`, "utf8")
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3)
  } catch {
    return "gone"
  }
}

const waitFor = async (what: string, check: () => boolean, ms: number) => {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

/** Starts the mediator on `ns`, watching `pidFile`, and waits for its "ready". */
const startMediator = async (pidFile: string, extra: ReadonlyArray<string> = []) => {
  const mediator = NodeChild.spawn(binary, [
    "--netns",
    `/run/netns/${ns}`,
    "--workspace",
    "t",
    "--gateway",
    "10.0.2.2",
    "--guest",
    "10.0.2.15",
    "--log",
    NodePath.join(work, "egress.jsonl"),
    "--tcp-port",
    "15001",
    "--udp-port",
    "15002",
    "--vmm-pidfile",
    pidFile,
    ...extra
  ], { stdio: ["ignore", "pipe", "pipe"], detached: true })
  spawned.push(mediator)
  let stderr = ""
  mediator.stderr.on("data", (d) => (stderr += d))
  await new Promise<void>((resolve, reject) => {
    mediator.stdout.on("data", (d) => String(d).includes("ready") && resolve())
    mediator.on("exit", (code) => reject(new Error(`the mediator exited (${code}): ${stderr}`)))
  })
  return mediator
}

beforeAll(() => {
  requireTool("ip", "iproute2")
  assert.isTrue(NodeFs.existsSync(binary), `${binary} is missing: npm run build (make -C guest) makes it`)
  work = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-mediator-"))
})

afterEach(() => {
  for (const child of spawned.splice(0)) {
    try {
      process.kill(-child.pid!, "SIGKILL")
    } catch {
      child.kill("SIGKILL")
    }
  }
  NodeChild.spawnSync("ip", ["netns", "delete", ns])
})

/**
 * Asks the mediator's resolver (10.0.2.2:53 in `ns`) for `name` from inside the namespace: the reply's
 * rcode, or "none" after 8 s, and how long it took.
 */
const lookUp = async (name: string) => {
  const script = [
    "import socket, struct, sys, time",
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(8)",
    "q = struct.pack('>HHHHHH', 0x4242, 0x0100, 1, 0, 0, 0)",
    "q += b''.join(bytes([len(p)]) + p.encode() for p in sys.argv[1].split('.')) + b'\\0' + struct.pack('>HH', 1, 1)",
    "t = time.time(); s.sendto(q, ('10.0.2.2', 53))",
    "try:",
    "    r = s.recv(512); print(r[3] & 15 if r[:2] == b'\\x42\\x42' else 'other', int((time.time() - t) * 1000))",
    "except socket.timeout:",
    "    print('none', int((time.time() - t) * 1000))"
  ].join("\n")
  // Not execFileSync: the upstream answering in this process must not be blocked.
  const { stdout } = await execFile("ip", ["netns", "exec", ns, "python3", "-c", script, name], {
    encoding: "utf8"
  })
  const [rcode, ms] = stdout.trim().split(" ")
  return { rcode: rcode!, ms: Number(ms) }
}

describe("the egress mediator's resolver", () => {
  it("relays what its upstream answers, and answers SERVFAIL for what it leaves unanswered", async () => {
    requireTool("python3", "python3")
    makeNamespace()
    // The upstream: NXDOMAIN for nx.test, silence for everything else.
    const upstream = NodeDgram.createSocket("udp4")
    upstream.on("message", (msg, from) => {
      if (!msg.includes(Buffer.from("\x02nx\x04test"))) return
      const reply = Buffer.from(msg)
      reply[2] = 0x81
      reply[3] = 0x83
      upstream.send(reply, from.port, from.address)
    })
    await new Promise<void>((resolve) => upstream.bind(0, "127.0.0.1", resolve))
    try {
      await startMediator(NodePath.join(work, "qemu4.pid"), [
        "--dns-upstream",
        `127.0.0.1:${upstream.address().port}`
      ])
      const answered = await lookUp("nx.test")
      assert.strictEqual(answered.rcode, "3", "the upstream's NXDOMAIN reaches the guest")
      assert.isBelow(answered.ms, 1_000)
      const silent = await lookUp("silent.test")
      assert.strictEqual(silent.rcode, "2", "SERVFAIL, rather than no answer")
      assert.isAtLeast(silent.ms, 2_500)
      assert.isBelow(silent.ms, 5_000)
    } finally {
      upstream.close()
    }
  }, 60_000)
})

describe("the egress mediator's end", () => {
  it("ends with a VMM left a zombie, and leaves a namespace made since under its name alone", async () => {
    makeNamespace()
    // The "VMM": a child of a shell that then becomes a `sleep` that never reaps it, so it stays a zombie.
    const parent = NodeChild.spawn("sh", ["-c", "sleep 1 & echo $!; exec sleep 120"], {
      stdio: ["ignore", "pipe", "ignore"],
      detached: true
    })
    spawned.push(parent)
    const vmm = await new Promise<number>((resolve) =>
      parent.stdout.once("data", (d) => resolve(Number.parseInt(String(d), 10)))
    )
    const pidFile = NodePath.join(work, "qemu.pid")
    NodeFs.writeFileSync(pidFile, `${vmm}\n`)
    const mediator = await startMediator(pidFile)
    const exited = new Promise<number | null>((resolve) => mediator.on("exit", resolve))

    // A later start of the workspace replaces the namespace under the same name.
    ip("netns", "delete", ns)
    const replacement = makeNamespace()

    await waitFor("the VMM to be a zombie", () => stateOf(vmm) === "Z", 10_000)
    const code = await Promise.race([
      exited,
      new Promise<"still running">((r) => setTimeout(() => r("still running"), 5_000))
    ])
    assert.strictEqual(code, 0, "the mediator ends within a few seconds of its VMM")
    assert.isTrue(NodeFs.existsSync(`/run/netns/${ns}`), "the new namespace keeps its name")
    assert.strictEqual(NodeFs.statSync(`/run/netns/${ns}`).ino, replacement)
  }, 60_000)

  it("ends with a VMM that ran for less than a second and took its pid file with it", async () => {
    makeNamespace()
    const pidFile = NodePath.join(work, "qemu3.pid")
    NodeFs.rmSync(pidFile, { force: true })
    const mediator = await startMediator(pidFile)
    const exited = new Promise<number | null>((resolve) => mediator.on("exit", resolve))
    // A short run: the VMM writes its pid file, ends within 300 ms, and its files are removed.
    const vmm = NodeChild.spawn("sleep", ["120"], { stdio: "ignore" })
    spawned.push(vmm)
    NodeFs.writeFileSync(pidFile, `${vmm.pid}\n`)
    await new Promise((r) => setTimeout(r, 300))
    vmm.kill("SIGKILL")
    NodeFs.rmSync(pidFile, { force: true })
    const code = await Promise.race([
      exited,
      new Promise<"still running">((r) => setTimeout(() => r("still running"), 5_000))
    ])
    assert.strictEqual(code, 0, "the mediator ends with its VMM rather than waiting out its grace")
  }, 60_000)

  it("removes its own namespace's name when its VMM ends", async () => {
    makeNamespace()
    const vmm = NodeChild.spawn("sleep", ["120"], { stdio: "ignore" })
    spawned.push(vmm)
    const pidFile = NodePath.join(work, "qemu2.pid")
    NodeFs.writeFileSync(pidFile, `${vmm.pid}\n`)
    const mediator = await startMediator(pidFile)
    const exited = new Promise<number | null>((resolve) => mediator.on("exit", resolve))
    vmm.kill("SIGKILL")
    assert.strictEqual(await exited, 0)
    assert.isFalse(NodeFs.existsSync(`/run/netns/${ns}`), "its namespace's name went with it")
  }, 60_000)
})

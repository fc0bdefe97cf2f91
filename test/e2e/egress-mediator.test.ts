/**
 * The egress mediator's own end, on the real binary and real network namespaces (no VM): it ends with
 * its VMM even when the VMM is left a zombie (an init that does not reap keeps a killed VMM's entry),
 * and it removes its namespace's name only while that name still names its own namespace: a later
 * start of the same workspace may have made a new one under it.
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterEach, assert, beforeAll, describe, it } from "vitest"
import { requireTool } from "../support/kernel.ts"

const binary = NodePath.resolve("guest/build/microagent-egress")
const ns = `microagent-egress-test-${process.pid}`
const spawned: Array<NodeChild.ChildProcess> = []
let work: string

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
const startMediator = async (pidFile: string) => {
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
    pidFile
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

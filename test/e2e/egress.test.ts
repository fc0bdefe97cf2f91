/**
 * Egress mediation on real QEMU microVMs, through the CLI, with one booted workspace in the default
 * mode (`broker`): a server on the host's 127.0.0.1 is unreachable through the gateway (10.0.2.2) and
 * through each of the host's own addresses, each attempt is audited as an inside denial; a foreign
 * resolver is refused with its signal; `microagent egress` reads the log; and the
 * namespace and mediator go away with the VM.
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeNet from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { egressNamespacePrefix } from "../../src/layers/network/EgressLive.ts"
import { cliAsync, type CliResult, stopRuntime } from "../support/cli.ts"
import { qemuProcessesMentioning, requireTool } from "../support/kernel.ts"

const image = "microagent.local/busybox:latest"
let stateDir: string
let server: NodeNet.Server
let port: number
let hits = 0

const ma = (args: ReadonlyArray<string>): Promise<CliResult> =>
  cliAsync(args, { stateDir, env: { MICROAGENT_BACKEND: "qemu" } })

const sh = async (workspace: string, script: string) => {
  const result = await ma(["exec", workspace, "--json", "--", "sh", "-c", script])
  assert.strictEqual(result.code, 0, result.stderr)
  return JSON.parse(result.stdout).result.stdout as string
}

const egressNamespaces = () =>
  NodeChild.execFileSync("ip", ["netns", "list"], { encoding: "utf8" }).split("\n").filter((l) =>
    l.startsWith(egressNamespacePrefix(NodePath.resolve(stateDir)))
  )

/** Every IPv4 address of the host except loopback (loopback is tried through 10.0.2.2). */
const hostAddresses = () =>
  Object.values(NodeOs.networkInterfaces()).flatMap((list) => list ?? []).filter((a) =>
    a.family === "IPv4" && !a.internal
  ).map((a) => a.address)

beforeAll(async () => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("ip", "iproute2")
  requireTool("iptables", "iptables")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-egress-"))
  // A server on the host's loopback only, counting every connection it gets.
  server = NodeNet.createServer((socket) => {
    hits++
    socket.end("HTTP/1.0 200 OK\r\n\r\nsecret\n")
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  port = (server.address() as NodeNet.AddressInfo).port
  const created = await ma(["create", "--image", image, "eg"])
  assert.strictEqual(created.code, 0, created.stderr)
  const started = await ma(["start", "eg"])
  assert.strictEqual(started.code, 0, started.stderr)
}, 600_000)

afterAll(async () => {
  await ma(["kill", "eg"])
  stopRuntime(stateDir)
  for (const pid of qemuProcessesMentioning(stateDir)) process.kill(pid, "SIGKILL")
  for (const ns of egressNamespaces()) NodeChild.spawnSync("ip", ["netns", "delete", ns.split(" ")[0]!])
  server.close()
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("egress mediation (broker, the default)", () => {
  it(
    "keeps the host's loopback out of reach through the gateway and every host address, and audits each attempt",
    async () => {
      const targets = ["10.0.2.2", ...hostAddresses()]
      const script = targets.map((t) => `echo GET | nc -w 3 ${t} ${port}; echo "${t}:$?"`).join("; ")
      const out = await sh("eg", script)
      assert.notInclude(out, "secret", out)
      assert.strictEqual(hits, 0)
      const log = await ma(["egress", "eg", "--json"])
      assert.strictEqual(log.code, 0, log.stderr)
      const records = JSON.parse(log.stdout).records as Array<Record<string, unknown>>
      for (const target of targets) {
        const denial = records.find((r) =>
          r.event === "egress_internal_deny" && r.dst === `${target}:${port}`
        )
        assert.isDefined(denial, `no inside denial for ${target}: ${JSON.stringify(records)}`)
        assert.strictEqual(denial!.internal, true)
      }
    },
    300_000
  )

  it("refuses a foreign resolver with its signal", async () => {
    await sh("eg", "nslookup -timeout=1 example.org 198.51.100.53 >/dev/null 2>&1; true")
    const log = await ma(["egress", "eg", "--json"])
    const records = JSON.parse(log.stdout).records as Array<Record<string, unknown>>
    assert.isDefined(records.find((r) => r.event === "egress_udp_deny" && r.signal === "foreign-resolver"))
  }, 300_000)

  it("removes the namespace and the mediator with the VM", async () => {
    assert.strictEqual(egressNamespaces().length, 1)
    const killed = await ma(["kill", "eg"])
    assert.strictEqual(killed.code, 0, killed.stderr)
    // The mediator notices its VMM is gone within a second or so; no timing is asserted, only the outcome.
    for (let i = 0; i < 100 && egressNamespaces().length > 0; i++) {
      await new Promise((r) => setTimeout(r, 200))
    }
    assert.deepStrictEqual(egressNamespaces(), [])
  }, 300_000)
})

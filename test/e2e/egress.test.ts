/**
 * Egress mediation on real QEMU microVMs, through the CLI. Two workspaces boot once: `eg` in the
 * default mode (`broker`) and `lk` with a locked allowlist, a byte cap and a rate cap. The mediator resolves through
 * a test DNS server on the host's loopback, and a test host with a public-looking address lives in a
 * network namespace (test/support/egressHosts.ts). Checked: a server on the host's 127.0.0.1 is
 * unreachable through the gateway (10.0.2.2), each of the host's own addresses, the metadata address and
 * a name that resolves to the gateway (rebinding), each attempt audited as an inside denial; the test host
 * is reachable by name in `broker` mode; under the locked allowlist only the allowlisted name resolves
 * (others are answered REFUSED), an address never resolved is refused, the rate cap slows a download
 * and the byte cap cuts it; `ad`, with its own addressing from a spec (10.77.0.20/24, a route), asks
 * the mediator at its gateway and reaches the test host through it;
 * a foreign resolver is refused with its signal; `microagent egress` reads the log; the namespaces and
 * mediators go away with the VMs.
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeNet from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { egressNamespacePrefix } from "../../src/layers/network/EgressLive.ts"
import { cliAsync, type CliResult, stopRuntime } from "../support/cli.ts"
import { type DnsServer, startDnsServer, startTestHost, type TestHost } from "../support/egressHosts.ts"
import { qemuProcessesMentioning, requireTool } from "../support/kernel.ts"

const image = "microagent.local/busybox:latest"
/** `lk`'s rate cap: the 50000 bytes its byte cap lets through take at least 2.5 s. */
const maxBps = 20000
let stateDir: string
let server: NodeNet.Server
let port: number
let hits = 0
let dns: DnsServer
let testHost: TestHost

const ma = (args: ReadonlyArray<string>): Promise<CliResult> =>
  cliAsync(args, {
    stateDir,
    env: { MICROAGENT_BACKEND: "qemu", MICROAGENT_EGRESS_DNS_UPSTREAM: `127.0.0.1:${dns.port}` }
  })

const sh = async (workspace: string, script: string) => {
  const result = await ma(["exec", workspace, "--json", "--", "sh", "-c", script])
  assert.strictEqual(result.code, 0, result.stderr)
  return JSON.parse(result.stdout).result.stdout as string
}

/** An HTTP GET with busybox `nc` (the image's busybox `wget` crashes), printing the whole response. */
const httpGet = (url: string) => {
  const { hostname, pathname, port: p } = new URL(url)
  return `printf 'GET ${pathname} HTTP/1.0\\r\\n\\r\\n' | nc -w 5 ${hostname} ${p}`
}

const egressRecords = async (workspace: string) => {
  const log = await ma(["egress", workspace, "--json"])
  assert.strictEqual(log.code, 0, log.stderr)
  return JSON.parse(log.stdout).records as Array<Record<string, unknown>>
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
  dns = await startDnsServer({
    "rebind.test": "10.0.2.2",
    "pub.test": "198.51.100.10",
    "allowed.test": "198.51.100.10"
  })
  testHost = await startTestHost(`ma-eg-test-host-${process.pid}`)
  const boot = async (name: string, flags: ReadonlyArray<string>) => {
    const created = await ma(["create", "--image", image, ...flags, name])
    assert.strictEqual(created.code, 0, created.stderr)
    const started = await ma(["start", name])
    assert.strictEqual(started.code, 0, started.stderr)
  }
  const spec = NodePath.join(stateDir, "addressed.yaml")
  NodeFs.writeFileSync(
    spec,
    "network:\n  ip: 10.77.0.20/24\n  routes: ['203.0.113.0/24 via 10.77.0.254']\n"
  )
  await Promise.all([
    boot("eg", []),
    boot("ad", ["--file", spec]),
    boot("lk", [
      "--egress-lock-allowlist",
      "--egress-allow",
      "allowed.test",
      "--egress-max-total-bytes",
      "50000",
      "--egress-max-bps",
      String(maxBps)
    ])
  ])
}, 600_000)

afterAll(async () => {
  await ma(["kill", "eg"])
  await ma(["kill", "lk"])
  await ma(["kill", "ad"])
  stopRuntime(stateDir)
  for (const pid of qemuProcessesMentioning(stateDir)) process.kill(pid, "SIGKILL")
  for (const ns of egressNamespaces()) NodeChild.spawnSync("ip", ["netns", "delete", ns.split(" ")[0]!])
  server.close()
  dns?.close()
  testHost?.close()
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("egress mediation (broker, the default)", () => {
  it(
    "keeps the host's loopback out of reach through the gateway and every host address, and audits each attempt",
    async () => {
      const targets = ["10.0.2.2", ...hostAddresses()]
      assert.include(targets, testHost.hostSide)
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

  it("counts an address the host gains after the mediator started as the host's own", async () => {
    // A public-looking address added to the host now (on lo): a server on all the host's addresses
    // answers on it, and the guest must not reach it.
    const address = "198.18.77.1"
    const open = NodeNet.createServer((socket) => {
      hits++
      socket.end("secret\n")
    })
    await new Promise<void>((resolve) => open.listen(0, "0.0.0.0", resolve))
    const openPort = (open.address() as NodeNet.AddressInfo).port
    NodeChild.execFileSync("ip", ["addr", "add", `${address}/32`, "dev", "lo"])
    try {
      const before = hits
      const out = await sh("eg", `echo GET | nc -w 3 ${address} ${openPort}; echo "rc=$?"`)
      assert.notInclude(out, "secret", out)
      assert.strictEqual(hits, before)
      const records = JSON.parse((await ma(["egress", "eg", "--json"])).stdout).records as Array<
        Record<string, unknown>
      >
      const denial = records.find((r) => r.dst === `${address}:${openPort}`)
      assert.deepInclude(denial ?? {}, { event: "egress_internal_deny", internal: true, class: "host" })
    } finally {
      NodeChild.spawnSync("ip", ["addr", "delete", `${address}/32`, "dev", "lo"])
      open.close()
    }
  }, 300_000)

  it("refuses a foreign resolver with its signal", async () => {
    await sh("eg", "nslookup -timeout=1 example.org 198.51.100.53 >/dev/null 2>&1; true")
    const log = await ma(["egress", "eg", "--json"])
    const records = JSON.parse(log.stdout).records as Array<Record<string, unknown>>
    assert.isDefined(records.find((r) => r.event === "egress_udp_deny" && r.signal === "foreign-resolver"))
  }, 300_000)

  it("refuses a name that resolves to the host (rebinding) and the metadata address", async () => {
    const out = await sh(
      "eg",
      `echo GET | nc -w 3 rebind.test ${port}; echo "rebind:$?"; echo GET | nc -w 3 169.254.169.254 80; echo "meta:$?"`
    )
    assert.notInclude(out, "secret", out)
    assert.strictEqual(hits, 0)
    assert.include(dns.asked, "rebind.test")
    const records = await egressRecords("eg")
    // The name led to the gateway, which `off` maps to the host's loopback: refused as inside, by name.
    const rebind = records.find((r) => r.event === "egress_internal_deny" && r.host === "rebind.test")
    assert.isDefined(rebind, JSON.stringify(records))
    assert.strictEqual(rebind!.dst, `10.0.2.2:${port}`)
    const metadata = records.find((r) => r.event === "egress_internal_deny" && r.dst === "169.254.169.254:80")
    assert.isDefined(metadata, JSON.stringify(records))
    assert.strictEqual(metadata!.class, "link-local")
  }, 300_000)

  it("reaches a public-looking host by name, and logs the flow with the name", async () => {
    const out = await sh("eg", httpGet("http://pub.test:8080/"))
    assert.include(out, "hello-from-test-host", out)
    const records = await egressRecords("eg")
    const allowed = records.find((r) => r.event === "egress_allow" && r.dst === `${testHost.address}:8080`)
    assert.isDefined(allowed, JSON.stringify(records))
    assert.strictEqual(allowed!.host, "pub.test")
  }, 300_000)

  it(
    "gives a guest its own addressing: the mediator answers at its gateway and carries its flows",
    async () => {
      const out = await sh(
        "ad",
        "ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; ip route | sort; cat /etc/resolv.conf; "
          + `nslookup pub.test 2>&1 | grep -c 198.51.100.10; ${httpGet("http://pub.test:8080/")}; `
          + `echo GET | nc -w 3 10.77.0.1 ${port}; echo "gateway:$?"`
      )
      assert.include(out, "inet 10.77.0.20/24", out)
      assert.include(out, "default via 10.77.0.1 dev eth0", out)
      assert.include(out, "203.0.113.0/24 via 10.77.0.254 dev eth0", out)
      assert.include(out, "nameserver 10.77.0.1", out)
      assert.include(out, "hello-from-test-host", out)
      // All of it after a warm start: the template's guest, booted on QEMU's addressing, took this one.
      const events = JSON.parse((await ma(["events", "ad", "--json"])).stdout).events as Array<
        { type: string; detail: string }
      >
      assert.match(
        events.find((e) => e.type === "warm")?.detail ?? "",
        /^restored template /,
        JSON.stringify(events)
      )
      assert.notInclude(out, "secret", out)
      const records = await egressRecords("ad")
      assert.isDefined(
        records.find((r) => r.event === "egress_allow" && r.host === "pub.test"),
        JSON.stringify(records)
      )
      // The gateway is the host's side, and the host's loopback stays out of reach through it.
      assert.isDefined(
        records.find((r) => r.event === "egress_internal_deny" && r.dst === `10.77.0.1:${port}`),
        JSON.stringify(records)
      )
    },
    300_000
  )

  it(
    "under a locked allowlist: an unresolved address is refused, other names REFUSED, the rate cap slows, the byte cap cuts",
    async () => {
      // Before any name led to it, the test host's address is one the mediator never resolved.
      const direct = await sh("lk", `${httpGet(`http://${testHost.address}:8080/`)}; echo "direct:$?"`)
      assert.notInclude(direct, "hello-from-test-host", direct)
      const askedBefore = dns.asked.length
      const refused = await sh("lk", "nslookup pub.test 10.0.2.3 2>&1; true")
      assert.match(refused, /REFUSED/i, refused)
      // Refused by the mediator itself: the question never went upstream.
      assert.notInclude(dns.asked.slice(askedBefore), "pub.test")
      const ok = await sh("lk", httpGet("http://allowed.test:8080/"))
      assert.include(ok, "hello-from-test-host", ok)
      // Slowed to the rate cap (a lower bound on the time, which load can only lengthen), then cut.
      const before = Date.now()
      const big = await sh("lk", `${httpGet("http://allowed.test:8080/big")} | wc -c`)
      const seconds = (Date.now() - before) / 1000
      assert.isBelow(Number(big.trim()), 200000, big)
      assert.isAbove(Number(big.trim()), 40000, big)
      assert.isAtLeast(seconds, (40000 / maxBps) * 0.9, `${big.trim()} bytes in ${seconds} s`)
      const records = await egressRecords("lk")
      const denied = records.find((r) => r.event === "egress_deny" && r.dst === `${testHost.address}:8080`)
      assert.isDefined(denied, JSON.stringify(records))
      assert.strictEqual(denied!.signal, "direct-ip-no-sni")
      assert.isDefined(
        records.find((r) => r.event === "egress_dns_deny" && r.name === "pub.test"),
        JSON.stringify(records)
      )
      assert.isDefined(
        records.find((r) => r.event === "egress_cap_exceeded" && r.cap === "max-total-bytes"),
        JSON.stringify(records)
      )
      assert.isDefined(
        records.find((r) =>
          r.event === "egress_cap_exceeded" && r.cap === "max-bps" && r.action === "throttled"
          && r.limit === maxBps
        ),
        JSON.stringify(records)
      )
    },
    300_000
  )

  it("removes the namespaces and the mediators with the VMs", async () => {
    assert.strictEqual(egressNamespaces().length, 3)
    for (const name of ["eg", "lk", "ad"]) {
      const killed = await ma(["kill", name])
      assert.strictEqual(killed.code, 0, killed.stderr)
    }
    // The mediator notices its VMM is gone within a second or so; no timing is asserted, only the outcome.
    for (let i = 0; i < 100 && egressNamespaces().length > 0; i++) {
      await new Promise((r) => setTimeout(r, 200))
    }
    assert.deepStrictEqual(egressNamespaces(), [])
  }, 300_000)

  it(
    "a boot that does not come up in time is booted once more behind a mediator of its own; the second failure leaves nothing",
    async () => {
      const created = await ma(["create", "--image", image, "late"])
      assert.strictEqual(created.code, 0, created.stderr)
      // No guest answers in half a second under TCG: both boots run out of time.
      const started = await ma(["--json", "start", "--cold", "--boot-timeout", "0.5", "late"])
      assert.strictEqual(started.code, 75, started.stderr)
      const error = JSON.parse(started.stderr.trim().split("\n").at(-1)!).error
      // Transient (the boot's time ran out), not a VMM that could not enter a namespace gone with the first.
      assert.strictEqual(error.kind, "transient", started.stderr)
      assert.include(error.message, "booted twice, in vain")
      const starts = (await egressRecords("late")).filter((r) => r.event === "egress_mediator_start")
      assert.strictEqual(starts.length, 2, "each boot had a mediator")
      const lateNamespaces = () => egressNamespaces().filter((l) => l.split(" ")[0]!.endsWith("-late"))
      for (let i = 0; i < 100 && lateNamespaces().length > 0; i++) {
        await new Promise((r) => setTimeout(r, 200))
      }
      assert.deepStrictEqual(lateNamespaces(), [])
      assert.deepStrictEqual(qemuProcessesMentioning(`${stateDir}/run/late/`), [])
      assert.strictEqual((await ma(["delete", "late"])).code, 0)
    },
    300_000
  )
})

/**
 * A hostile guest on real QEMU microVMs, through the CLI: root inside the VM attacks the containment
 * and the host's side of it. Two workspaces boot once under mediation (`--egress broker`, the default):
 * `at`, the attacker (at most 32 concurrent connections, a credential broker endpoint to a plain HTTP
 * upstream on the host's loopback), and `by`, a bystander. The attacker brings its own static tool
 * (test/support/hostile.c, built here with gcc and copied in) for what busybox cannot do: Ethernet
 * frames of its own, forged sources, an ICMP flood from a raw socket, 10000 connections at once.
 *
 * - Raw frames and spoofing (forged ARP claiming the gateway, the resolver and the test host; TCP and
 *   UDP with forged sources to the host's loopback, the gateway and every host address; malformed
 *   IPv4, IPv6, other ethertypes), busybox's gratuitous `arping`, an extra address on eth0 used as a
 *   source, and an ICMP flood reach nothing inside (servers on the host's 127.0.0.1 count zero TCP
 *   connections and zero datagrams), the mediator keeps its pid and serves on; forged UDP is audited
 *   with its real destination, connections from the extra address as inside denials, and the flood is
 *   counted by the namespace's drop rule (ICMP goes to no socket of the mediator's).
 * - 10000 connections at once to the public test host: the mediator keeps its pid, at most the cap
 *   reaches the test host, every refusal is audited as `egress_cap_exceeded`, and the bystander reaches
 *   the test host during the flood and the attacker again after a second one.
 * - DNS answers far over 512 bytes, over the mediator's 4096-byte buffer, and garbage with the right
 *   id: the guest's lookups end (fail or are cut) in bounded time, the mediator keeps its pid, and the
 *   next ordinary lookup answers.
 * - The credential broker gets garbage, a 70 KiB header, a request line that never ends (one 100 KB
 *   long, one left open), and 200 parallel connections: its pid does not change, each malformed request
 *   is refused and audited without reaching the upstream, the parallel requests the guest's forwarder
 *   carries (it holds 64 at once) are answered, and a normal request goes through afterwards.
 * - Quarantine cuts a workspace that connects every ~10 ms to the test host: the test host sees its last
 *   request within `cutBoundMs` of the quarantine marker (the event written just before the vCPUs are
 *   frozen and the links cut), and requests came right up to the marker.
 *
 * The test host and the DNS server are this file's own (test/support/egressHosts.ts's are the model): the
 * test host logs the time of each request and lives on 198.19.77.0/24 (benchmarking space, not inside),
 * apart from other files' test hosts that may run at the same time.
 */
import * as NodeChild from "node:child_process"
import * as NodeDgram from "node:dgram"
import * as NodeFs from "node:fs"
import * as NodeHttp from "node:http"
import * as NodeNet from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { egressNamespace, egressNamespacePrefix } from "../../src/layers/network/EgressLive.ts"
import { cliAsync, type CliResult, stopRuntime } from "../support/cli.ts"
import { peerNamespace } from "../support/egressHosts.ts"
import { qemuProcessesMentioning, requireTool } from "../support/kernel.ts"

const image = "microagent.local/busybox:latest"
/** The attacker's `--egress-max-conns`. */
const maxConns = 32
/**
 * From the quarantine marker to the last request the test host saw. The issue asks for 100 ms; measured
 * here (idle host) 4-30 ms: the marker is followed at once by QMP `stop` (the vCPUs freeze) and
 * `set_link` down on every netdev, and only a request already on the wire can arrive after it.
 */
const cutBoundMs = 100
const hostNet = "198.19.77"
const testHostIp = `${hostNet}.10`

let stateDir: string
let scratch: string
let tool: string
let dns: HostileDns
let testHost: TickingHost
let loopbackServer: NodeNet.Server
let loopbackUdp: NodeDgram.Socket
let loopbackPort: number
let tcpHits = 0
let udpHits = 0
let upstream: NodeHttp.Server
let upstreamPort: number
let upstreamRequests = 0

const ma = (args: ReadonlyArray<string>): Promise<CliResult> =>
  cliAsync(args, {
    stateDir,
    env: { MICROAGENT_BACKEND: "qemu", MICROAGENT_EGRESS_DNS_UPSTREAM: `127.0.0.1:${dns.port}` }
  })

const ok = async (args: ReadonlyArray<string>) => {
  const result = await ma(args)
  assert.strictEqual(result.code, 0, `${args.join(" ")}: ${result.stderr}`)
  return result
}

/** The script's stdout and stderr (its exit status is the caller's to print). */
const sh = async (workspace: string, script: string) => {
  const result = JSON.parse((await ok(["exec", workspace, "--json", "--", "sh", "-c", script])).stdout).result
  return `${result.stdout}${result.stderr}` as string
}

const egressRecords = async (workspace: string) =>
  JSON.parse((await ok(["egress", workspace, "--json"])).stdout).records as Array<Record<string, unknown>>

const pidIn = (file: string) => Number(NodeFs.readFileSync(file, "utf8").trim().split(/\s+/)[0])
const mediatorPid = (workspace: string) => pidIn(NodePath.join(stateDir, "run", workspace, "egress.pid"))
const brokerPid = (workspace: string) => pidIn(NodePath.join(stateDir, "run", workspace, "broker.pid"))
/** Whether `pid` runs and its command line names `what` (what `ps` would show). */
const runs = (pid: number, what: string) => {
  try {
    return NodeFs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(what)
  } catch {
    return false
  }
}

/** The packets the namespace's last INPUT rule (the counting DROP) has dropped. */
const droppedInNamespace = (workspace: string) => {
  const out = NodeChild.execFileSync(
    "ip",
    [
      "netns",
      "exec",
      egressNamespace(stateDir, workspace),
      "iptables",
      "-w",
      "-L",
      "INPUT",
      "-v",
      "-n",
      "-x"
    ],
    { encoding: "utf8" }
  )
  const rule = out.trim().split("\n").at(-1)!.trim().split(/\s+/)
  assert.strictEqual(rule[2], "DROP", out)
  return Number(rule[0])
}

/** An HTTP/1.0 GET with busybox `nc`, printing the whole response. */
const httpGet = (host: string, path: string) =>
  `printf 'GET ${path} HTTP/1.0\\r\\n\\r\\n' | nc -w 5 ${host} 8080`

/** Every IPv4 address of the host except loopback. */
const hostAddresses = () =>
  Object.values(NodeOs.networkInterfaces()).flatMap((list) => list ?? []).filter((a) =>
    a.family === "IPv4" && !a.internal
  ).map((a) => a.address)

interface HostileDns {
  readonly port: number
  readonly asked: Array<string>
  readonly close: () => void
}

/**
 * A DNS server on 127.0.0.1: `pub.test` is the test host; `many.test` has 100 A records (1.6 KB, over
 * UDP's 512 bytes with no EDNS); `huge.test` 1000 (16 KB, over the mediator's 4096-byte buffer);
 * `garbage.test` gets the right id and counts of 65535 records each, then bytes that are no records
 * (compression pointers to themselves and past the end); `short.test` a bare header promising ten
 * answers. Anything else is NXDOMAIN.
 */
const startHostileDns = (): Promise<HostileDns> =>
  new Promise((resolve, reject) => {
    const socket = NodeDgram.createSocket("udp4")
    const asked: Array<string> = []
    socket.on("message", (query, peer) => {
      if (query.length < 17) return
      const labels: Array<string> = []
      let at = 12
      while (at < query.length && query[at] !== 0) {
        labels.push(query.subarray(at + 1, at + 1 + query[at]!).toString("latin1"))
        at += 1 + query[at]!
      }
      const name = labels.join(".").toLowerCase()
      const qtype = query.readUInt16BE(at + 1)
      asked.push(name)
      const question = query.subarray(12, at + 5)
      const header = (rcode: number, answers: number, counts = [1, answers, 0, 0]) => {
        const h = Buffer.alloc(12)
        h.writeUInt16BE(query.readUInt16BE(0), 0)
        h.writeUInt16BE(0x8180 | rcode, 2)
        counts.forEach((c, i) => h.writeUInt16BE(c, 4 + 2 * i))
        return h
      }
      const a = (address: string) =>
        Buffer.concat([
          Buffer.from([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]),
          Buffer.from(address.split(".").map(Number))
        ])
      const records = (count: number) =>
        Array.from({ length: count }, (_, i) => a(`${hostNet}.${(i % 250) + 1}`))
      const reply = (() => {
        if (qtype !== 1) return Buffer.concat([header(0, 0), question])
        switch (name) {
          case "pub.test":
            return Buffer.concat([header(0, 1), question, a(testHostIp)])
          case "many.test":
            return Buffer.concat([header(0, 100), question, ...records(100)])
          case "huge.test":
            return Buffer.concat([header(0, 1000), question, ...records(1000)])
          case "garbage.test": {
            const junk = Buffer.alloc(900)
            for (let i = 0; i < junk.length; i += 2) {
              junk.writeUInt16BE(i % 6 === 0 ? 0xc000 | (12 + i) : 0xffff, i)
            }
            return Buffer.concat([header(0, 0, [1, 65535, 65535, 65535]), question, junk])
          }
          case "short.test":
            return header(0, 10)
          default:
            return Buffer.concat([header(3, 0), question])
        }
      })()
      socket.send(reply, peer.port, peer.address)
    })
    socket.once("error", reject)
    socket.bind(0, "127.0.0.1", () =>
      resolve({
        port: socket.address().port,
        asked,
        close: () => socket.close()
      }))
  })

interface TickingHost {
  /** When (ms since the epoch, this host's clock) each request the test host answered arrived. */
  readonly requests: Array<number>
  /** Connections open at the test host's server now, and the most at once so far. */
  readonly connections: () => Promise<{ open: number; most: number }>
  readonly close: () => void
}

/**
 * A namespace `name` holding `testHostIp` (the host is `${hostNet}.1`), joined by a veth pair, with an
 * HTTP server on port 8080 answering `hello-from-test-host` and writing `req <ms>` for each request and
 * `conns <open> <most>` when asked (`/conns`).
 */
const startTickingHost = async (name: string): Promise<TickingHost> => {
  const peer = peerNamespace(name, hostNet, `thx${name.slice(-6)}`)
  const server = NodeChild.spawn("ip", [
    "netns",
    "exec",
    name,
    process.execPath,
    "-e",
    `let open = 0, most = 0
    const server = require("node:http").createServer((q, s) => {
      process.stdout.write("req " + Date.now() + "\\n")
      s.end("hello-from-test-host\\n")
    })
    server.on("connection", (c) => { open++; most = Math.max(most, open); c.on("close", () => open--) })
    process.stdin.on("data", () => process.stdout.write("conns " + open + " " + most + "\\n"))
    server.listen(8080, "${testHostIp}", () => process.stdout.write("ready\\n"))`
  ], { stdio: ["pipe", "pipe", "inherit"] })
  const requests: Array<number> = []
  const waiting: Array<(line: string) => void> = []
  let buffered = ""
  let ready: () => void = () => {}
  server.stdout.on("data", (d: Buffer) => {
    buffered += d.toString("utf8")
    let nl: number
    while ((nl = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, nl)
      buffered = buffered.slice(nl + 1)
      if (line.startsWith("req ")) requests.push(Number(line.slice(4)))
      else if (line.startsWith("conns ")) waiting.shift()?.(line)
      else if (line === "ready") ready()
    }
  })
  await new Promise<void>((resolve, reject) => {
    ready = resolve
    server.once("exit", (code) => reject(new Error(`the test host's server exited ${code}`)))
  })
  return {
    requests,
    connections: () =>
      new Promise((resolve) => {
        waiting.push((line) => {
          const [, open, most] = line.split(" ")
          resolve({ open: Number(open), most: Number(most) })
        })
        server.stdin.write("?\n")
      }),
    close: () => {
      server.kill("SIGKILL")
      peer.remove()
    }
  }
}

beforeAll(async () => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("ip", "iproute2")
  requireTool("iptables", "iptables")
  requireTool("gcc", "gcc")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-hostile-"))
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-hostile-tool-"))
  tool = NodePath.join(scratch, "hostile")
  NodeChild.execFileSync("gcc", [
    "-static",
    "-O2",
    "-o",
    tool,
    NodePath.resolve(import.meta.dirname, "../support/hostile.c")
  ], { stdio: "pipe" })
  // Servers on the host's loopback only, counting every TCP connection and every datagram.
  loopbackServer = NodeNet.createServer((socket) => {
    tcpHits++
    socket.end("HTTP/1.0 200 OK\r\n\r\nsecret\n")
  })
  await new Promise<void>((resolve) => loopbackServer.listen(0, "127.0.0.1", resolve))
  loopbackPort = (loopbackServer.address() as NodeNet.AddressInfo).port
  loopbackUdp = NodeDgram.createSocket("udp4")
  loopbackUdp.on("message", () => udpHits++)
  await new Promise<void>((resolve) => loopbackUdp.bind(loopbackPort, "127.0.0.1", resolve))
  // The broker's upstream: answers every request with its path.
  upstream = NodeHttp.createServer((request, response) => {
    upstreamRequests++
    request.resume()
    request.on("end", () => response.end(`upstream saw ${request.url}\n`))
  })
  await new Promise<void>((resolve) => upstream.listen(0, "127.0.0.1", resolve))
  upstreamPort = (upstream.address() as NodeNet.AddressInfo).port
  dns = await startHostileDns()
  testHost = await startTickingHost(`ma-hostile-host-${process.pid}`)
  const boot = async (name: string, flags: ReadonlyArray<string>) => {
    await ok(["create", "--image", image, ...flags, name])
    await ok(["start", name])
  }
  await Promise.all([
    boot("at", [
      "--egress-max-conns",
      String(maxConns),
      "--broker",
      `upstream=http://127.0.0.1:${upstreamPort}`
    ]),
    boot("by", [])
  ])
  await ok(["cp", tool, "at:/root/hostile"])
  await sh("at", "chmod 0755 /root/hostile")
}, 600_000)

afterAll(async () => {
  await ma(["kill", "at"])
  await ma(["kill", "by"])
  stopRuntime(stateDir)
  for (const pid of qemuProcessesMentioning(stateDir)) process.kill(pid, "SIGKILL")
  for (const ns of NodeChild.execFileSync("ip", ["netns", "list"], { encoding: "utf8" }).split("\n")) {
    if (ns.startsWith(egressNamespacePrefix(NodePath.resolve(stateDir)))) {
      NodeChild.spawnSync("ip", ["netns", "delete", ns.split(" ")[0]!])
    }
  }
  loopbackServer?.close()
  loopbackUdp?.close()
  upstream?.close()
  dns?.close()
  testHost?.close()
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
  NodeFs.rmSync(scratch, { recursive: true, force: true })
})

describe("a hostile guest (root in the VM) against the mediation, the broker and quarantine", () => {
  it(
    "raw frames, forged ARP and sources, an extra address and an ICMP flood reach nothing inside",
    async () => {
      const mediator = mediatorPid("at")
      const droppedBefore = droppedInNamespace("at")
      const targets = hostAddresses()
      const out = await sh(
        "at",
        [
          // The gateway's MAC in the ARP cache, for the tool's frames.
          "nc -w 2 10.0.2.2 9 </dev/null",
          // busybox: gratuitous ARP claiming the gateway and the resolver.
          "arping -U -c 3 -w 3 -I eth0 -s 10.0.2.2 10.0.2.2",
          "arping -A -c 3 -w 3 -I eth0 -s 10.0.2.3 10.0.2.3",
          `/root/hostile raw eth0 ${loopbackPort} ${targets.join(" ")}`,
          "/root/hostile icmp 10.0.2.2 3000",
          `/root/hostile icmp ${testHostIp} 2000`,
          // Another address on eth0, used as the source of connections to the inside.
          // (busybox nc has no -s: the routes give the extra address as the source.)
          "ip addr add 10.0.2.99/24 dev eth0",
          "ip route change 10.0.2.0/24 dev eth0 src 10.0.2.99",
          "ip route change default via 10.0.2.2 dev eth0 src 10.0.2.99",
          "ip route get 10.0.2.2",
          `echo GET | nc -w 3 10.0.2.2 ${loopbackPort}; echo "from-extra:$?"`,
          `echo GET | nc -w 3 ${targets[0]} ${loopbackPort}; echo "from-extra-host:$?"`,
          "ip route change 10.0.2.0/24 dev eth0 src 10.0.2.15",
          "ip route change default via 10.0.2.2 dev eth0 src 10.0.2.15",
          "ip addr del 10.0.2.99/24 dev eth0",
          // And the outside is still served.
          httpGet(testHostIp, "/after-raw")
        ].map((step) => `${step} 2>&1`).join("; ")
      )
      assert.match(out, /raw sent=\d{3}/, out)
      const icmp = [...out.matchAll(/icmp sent=(\d+) replies=(\d+)/g)]
      assert.strictEqual(icmp.length, 2, out)
      for (const [, sent, replies] of icmp) {
        assert.isAtLeast(Number(sent), 1000, out)
        assert.strictEqual(Number(replies), 0, `ICMP answered: ${out}`)
      }
      assert.match(out, /10\.0\.2\.2 from 10\.0\.2\.99|src 10\.0\.2\.99/, out)
      assert.include(out, "hello-from-test-host", out)
      assert.notInclude(out, "secret", out)
      // Give a late frame its chance to arrive, then count: nothing reached the host's loopback.
      await new Promise((resolve) => setTimeout(resolve, 500))
      assert.strictEqual(tcpHits, 0, "a TCP connection reached the host's loopback")
      assert.strictEqual(udpHits, 0, "a datagram reached the host's loopback")
      assert.strictEqual(mediatorPid("at"), mediator)
      assert.isTrue(runs(mediator, "microagent-egress"), "the mediator runs")
      // The ICMP flood to the gateway went to no socket: the namespace's drop rule counted it.
      // (A loaded host may lose a few of the 3000 on the way: nine in ten is the bound.)
      assert.isAtLeast(droppedInNamespace("at") - droppedBefore, Number(icmp[0]![1]) * 0.9)
      const records = await egressRecords("at")
      // Forged UDP reached the mediator's sink and is audited with the destination it was sent to.
      const forged = records.filter((r) =>
        r.event === "egress_udp_internal_deny" && r.dst === `10.0.2.2:${loopbackPort}`
      )
      assert.isAtLeast(forged.length, 1, JSON.stringify(records.slice(-40)))
      for (const target of ["10.0.2.2", targets[0]]) {
        assert.isDefined(
          records.find((r) => r.event === "egress_internal_deny" && r.dst === `${target}:${loopbackPort}`),
          `no inside denial for ${target}: ${JSON.stringify(records.slice(-40))}`
        )
      }
    },
    300_000
  )

  it(
    "10000 connections at once: the mediator stays, the cap holds and is audited, the bystander is served",
    async () => {
      const mediator = mediatorPid("at")
      const requestsBefore = testHost.requests.length
      const capsBefore = (await egressRecords("at")).filter((r) => r.event === "egress_cap_exceeded").length
      // Opened at once, then held 8 s, while the bystander goes to the same test host.
      const flood = sh("at", `/root/hostile flood ${testHostIp} 8080 10000 8 2>&1`)
      const deadline = Date.now() + 60_000
      while (Date.now() < deadline) {
        const log = NodeFs.readFileSync(NodePath.join(stateDir, "workspaces", "at", "egress.jsonl"), "utf8")
        if ((log.match(/egress_cap_exceeded/g) ?? []).length > capsBefore + 1000) break
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
      const during = await sh("by", httpGet("pub.test", "/during-flood"))
      assert.include(during, "hello-from-test-host", during)
      const out = await flood
      const made = /flood made=(\d+) opened=(\d+) refused=(\d+) pending=(\d+)/.exec(out)
      assert.isNotNull(made, out)
      assert.strictEqual(Number(made![1]), 10000, out)
      assert.strictEqual(mediatorPid("at"), mediator)
      assert.isTrue(runs(mediator, "microagent-egress"), "the mediator runs")
      // The attacker's connections that reached the test host: the cap's worth (plus the bystander's one).
      const { most } = await testHost.connections()
      assert.isAtMost(most, maxConns + 2)
      // Every connection beyond the cap was refused and audited (some of the first held a slot). The
      // mediator handles each accepted connection in a child of its own, which under load can still be
      // writing its record when the guest's flood ends: the count is awaited, not read once.
      const expected = 10000 - maxConns - 1
      const auditDeadline = Date.now() + 120_000
      let caps: Array<Record<string, unknown>> = []
      while (true) {
        caps = (await egressRecords("at")).filter((r) =>
          r.event === "egress_cap_exceeded" && r.cap === "max-conns"
        )
        if (caps.length - capsBefore >= expected || Date.now() > auditDeadline) break
        await new Promise((resolve) => setTimeout(resolve, 1000))
      }
      assert.isAtLeast(caps.length - capsBefore, expected, `${caps.length} refusals`)
      assert.strictEqual(caps.at(-1)!.limit, maxConns)
      assert.strictEqual(tcpHits, 0)
      // Once a flood is over its connections no longer count: the attacker is served again, even after
      // a second flood (the mediator once lost count of ended connections under a flood and refused
      // every later one as over the cap).
      const again = await sh("at", `/root/hostile flood ${testHostIp} 8080 10000 0 2>&1`)
      assert.match(again, /flood made=10000/, again)
      assert.strictEqual(mediatorPid("at"), mediator)
      const after = await sh("at", httpGet(testHostIp, "/after-flood"))
      assert.include(after, "hello-from-test-host", after)
      assert.isAtLeast(testHost.requests.length - requestsBefore, 2)
    },
    300_000
  )

  it(
    "oversized and malformed DNS answers end cleanly; the mediator stays and answers the next one",
    async () => {
      const mediator = mediatorPid("at")
      const out = await sh(
        "at",
        ["many.test", "huge.test", "garbage.test", "short.test", "pub.test"].map((name) =>
          `timeout 20 nslookup -timeout=2 -retry=1 ${name} 10.0.2.3 >/tmp/ns.$$ 2>&1; `
          + `echo "${name}: exit=$? addresses=$(grep -c '${hostNet}' /tmp/ns.$$)"`
        ).join("; ")
      )
      for (const name of ["many.test", "huge.test", "garbage.test", "short.test"]) {
        assert.include(dns.asked, name)
        // Ended on its own (a lookup that hung would be cut by timeout, exit 124 or 143).
        assert.notMatch(out, new RegExp(`${name}: exit=(124|143)`), out)
      }
      assert.strictEqual(mediatorPid("at"), mediator)
      assert.isTrue(runs(mediator, "microagent-egress"), "the mediator runs")
      // The next ordinary lookup answers, and the name leads to the test host.
      assert.match(out, /pub\.test: exit=0 addresses=[1-9]/, out)
      const again = await sh("at", `${httpGet("pub.test", "/after-dns")}`)
      assert.include(again, "hello-from-test-host", again)
    },
    300_000
  )

  it(
    "the broker takes garbage, a huge header, an endless request line and 200 connections, and serves on",
    async () => {
      const broker = brokerPid("at")
      assert.isTrue(runs(broker, "microagent-broker"), "the broker runs")
      const before = upstreamRequests
      const out = await sh(
        "at",
        [
          // A request line that never ends and a connection that stays open, meanwhile.
          "(printf 'GET /never-ending'; sleep 20) | nc 127.0.0.1 18888 >/dev/null 2>&1 &",
          "head -c 100000 /dev/urandom | nc -w 5 127.0.0.1 18888 | head -c 12; echo ' garbage'",
          "{ printf 'GET /h HTTP/1.1\\r\\nHost: x\\r\\nX-Big: '; head -c 70000 /dev/zero | tr '\\0' a; "
          + "printf '\\r\\n\\r\\n'; } | nc -w 5 127.0.0.1 18888 | head -c 12; echo ' huge-header'",
          "{ printf 'GET /'; head -c 100000 /dev/zero | tr '\\0' a; } | nc -w 5 127.0.0.1 18888 | head -c 12; "
          + "echo ' endless-line'",
          "i=0; while [ $i -lt 200 ]; do "
          + "printf 'GET /p%d HTTP/1.0\\r\\n\\r\\n' $i | nc -w 20 127.0.0.1 18888 >/tmp/p.$i 2>&1 & "
          + "i=$((i+1)); done; wait",
          "cat /tmp/p.* | grep -c 'upstream saw /p' | sed 's/$/ parallel-answered/'"
        ].join("\n")
      )
      // Each malformed request is answered 400, or the connection closes before the client reads the
      // answer (it is still writing its 100 KB when the broker stops reading); never anything else.
      for (const what of ["garbage", "huge-header", "endless-line"]) {
        assert.match(out, new RegExp(`^(HTTP/1\\.1 4\\d\\d)? ${what}$`, "m"), out)
      }
      // The guest's forwarder carries 64 connections at once and closes the ones beyond (its own limit,
      // inside the guest; 46 to 78 of the 200 were answered in the runs so far): a good share is served
      // while they are all open, and nothing else went upstream.
      const answered = Number(/(\d+) parallel-answered/.exec(out)?.[1])
      const carried = `${answered} answered, ${upstreamRequests - before} upstream: ${out}`
      assert.isAtLeast(answered, 20, carried)
      assert.isAtLeast(upstreamRequests - before, answered, carried)
      assert.isAtMost(upstreamRequests - before, 200, carried)
      assert.strictEqual(brokerPid("at"), broker)
      assert.isTrue(runs(broker, "microagent-broker"), "the broker runs")
      const normal = await sh("at", "wget -q -O - http://127.0.0.1:18888/normal-after")
      assert.include(normal, "upstream saw /normal-after", normal)
      const audit = NodeFs.readFileSync(
        NodePath.join(stateDir, "workspaces", "at", "broker-access.jsonl"),
        "utf8"
      )
        .trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>)
      assert.isAtLeast(
        audit.filter((r) => r.event === "broker_request_deny" && r.rule === "malformed-request").length,
        3,
        JSON.stringify(audit.filter((r) => r.event !== "broker_request_allow"))
      )
      // Audited as each ends upstream: the answered ones and the normal one at least, never more than went.
      const allowed = audit.filter((r) => r.event === "broker_request_allow").length
      assert.isAtLeast(allowed, answered + 1)
      assert.isAtMost(allowed, upstreamRequests - before + 1)
    },
    300_000
  )

  it(`quarantine cuts the network within ${cutBoundMs} ms of its marker`, async () => {
    // A request every ~10 ms (one nc each), in the background of the guest.
    await sh(
      "by",
      `setsid sh -c 'while :; do printf "GET /tick HTTP/1.0\\r\\n\\r\\n" | nc -w 2 ${testHostIp} 8080; `
        + `usleep 10000; done' </dev/null >/dev/null 2>&1 &`
    )
    const flowing = Date.now()
    while (testHost.requests.filter((t) => t > flowing).length < 20) {
      assert.isBelow(Date.now() - flowing, 30_000, "the guest's requests never came")
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    const issued = Date.now()
    const result = await ok(["quarantine", "by", "--no-capture", "--reason", "hostile test", "--json"])
    const returned = Date.now()
    assert.strictEqual(JSON.parse(result.stdout).state, "quarantined", result.stdout)
    const events = JSON.parse((await ok(["events", "by", "--json"])).stdout).events as Array<
      { type: string; at: string }
    >
    const marker = Date.parse(events.find((e) => e.type === "quarantine")!.at)
    // Anything still in flight arrives now or never.
    await new Promise((resolve) => setTimeout(resolve, 1000))
    const last = Math.max(...testHost.requests)
    const before = testHost.requests.filter((t) => t <= marker)
    const rate = before.filter((t) => t > marker - 1000).length
    console.log(
      `quarantine: CLI start-up to the marker ${marker - issued} ms, command ${returned - issued} ms; `
        + `last request ${last - marker} ms after the marker; ${rate} requests in the second before it`
    )
    // Requests came right up to the marker, so the bound below measures the cut, not an idle guest.
    // (About 20 a second on an idle host, 4 while CI held both cores.)
    assert.isAtLeast(rate, 3)
    assert.isAtMost(last - marker, cutBoundMs, `the last request came ${last - marker} ms after the marker`)
    assert.isAbove(marker, issued)
    // Nothing of the VM is left to send anything.
    assert.deepStrictEqual(
      qemuProcessesMentioning(NodePath.join(stateDir, "run", "by")),
      [],
      "no VMM is left"
    )
  }, 300_000)
})

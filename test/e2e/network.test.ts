/**
 * Networking on real QEMU microVMs, through the CLI: DNS in user mode, a published port reached from
 * the host, isolated workspaces without a NIC, a host port in use refused before boot, two members of
 * a named network reaching each other by name, and nothing (tap, bridge, namespace) left after
 * kill -9 of QEMU and delete.
 */
import * as NodeChild from "node:child_process"
import * as NodeDns from "node:dns/promises"
import * as NodeFs from "node:fs"
import * as NodeNet from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { namespacePrefix, stateTag } from "../../src/layers/network/Addressing.ts"
import { cliAsync, type CliResult, errorOf, stopRuntime } from "../support/cli.ts"
import { qemuProcessesMentioning, requireTool } from "../support/kernel.ts"
import { freePort } from "../support/registry.ts"

const image = "microagent.local/busybox:latest"
let stateDir: string

const ma = (args: ReadonlyArray<string>): Promise<CliResult> =>
  cliAsync(args, { stateDir, env: { MICROAGENT_BACKEND: "qemu" } })

const json = (result: CliResult) => {
  assert.strictEqual(result.stderr.includes("internal error"), false, result.stderr)
  assert.isAbove(result.stdout.length, 0, `no output; exit ${result.code}; stderr: ${result.stderr}`)
  return JSON.parse(result.stdout)
}

/** Runs a command in a running workspace and returns its stdout; a non-zero exit fails the test. */
const sh = async (workspace: string, script: string) => {
  const result = await ma(["exec", workspace, "--", "sh", "-c", script])
  const out = json(result)
  assert.strictEqual(result.code, 0, `${script}: ${out.result?.stderr ?? result.stderr}`)
  return out.result.stdout as string
}

/** QEMU processes whose command line mentions this test's state directory. */
const qemuProcesses = (): Array<number> => qemuProcessesMentioning(stateDir)

const ip = (args: ReadonlyArray<string>) => NodeChild.execFileSync("ip", [...args], { encoding: "utf8" })

/** Host-side devices of this test's state directory: namespaces, and taps or bridges on the host stack. */
const leftovers = () => {
  const tag = stateTag(NodePath.resolve(stateDir))
  return {
    namespaces: ip(["netns", "list"]).split("\n").filter((l) =>
      l.startsWith(namespacePrefix(NodePath.resolve(stateDir)))
    ),
    links: ip(["-o", "link"]).split("\n").filter((l) => l.includes(tag))
  }
}

const listen = (port: number) =>
  new Promise<NodeNet.Server>((resolve, reject) => {
    const server = NodeNet.createServer((socket) => socket.end())
    server.once("error", reject)
    server.listen(port, "127.0.0.1", () => resolve(server))
  })

beforeAll(async () => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("mke2fs", "e2fsprogs")
  requireTool("ip", "iproute2")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-net-"))
  // The first boot installs the kernel; the tests' time is then the VMs'.
  const first = await ma(["run", image, "--", "true"])
  assert.strictEqual(first.code, 0, first.stderr)
}, 600_000)

afterAll(() => {
  stopRuntime(stateDir)
  for (const pid of qemuProcesses()) process.kill(pid, "SIGKILL")
  for (const ns of leftovers().namespaces) NodeChild.spawnSync("ip", ["netns", "delete", ns.split(" ")[0]!])
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("user and isolated networking", () => {
  it("resolves a name the host resolves, through slirp's DNS forwarder", async () => {
    const host = await NodeDns.lookup("deb.debian.org", { family: 4 })
    const out = json(
      // DNS over UDP through slirp can lose a datagram, and busybox's nslookup exits 0 when only its AAAA
      // query was answered: the guest asks again, up to ten times, until an answer names the host.
      await ma([
        "run",
        image,
        "--",
        "sh",
        "-c",
        "cat /etc/resolv.conf; for i in 1 2 3 4 5 6 7 8 9 10; do r=$(nslookup deb.debian.org 2>&1); "
        + 'case "$r" in *"Name:"*) echo "$r"; exit 0;; esac; sleep 1; done; echo "$r"; exit 1'
      ])
    )
    assert.strictEqual(out.result.exitCode, 0, out.result.stdout + out.result.stderr)
    assert.include(out.result.stdout, "nameserver 10.0.2.3")
    assert.include(out.result.stdout, `Address: ${host.address}`)
  })

  it("gives an isolated workspace no NIC, and refuses --publish with it before boot", async () => {
    const out = json(await ma(["run", "--network", "isolated", image, "--", "ls", "/sys/class/net"]))
    assert.strictEqual(out.result.stdout, "lo\n")
    const refused = await ma(["run", "--network", "isolated", "-p", "18080:80", image, "--", "true"])
    assert.strictEqual(refused.code, 2, refused.stderr)
    assert.include(errorOf(refused).error.message, "isolated")
    assert.deepStrictEqual(json(await ma(["list"])).workspaces, [])
    assert.deepStrictEqual(qemuProcesses(), [])
  })

  it("rejects malformed --publish values with a usage error", async () => {
    for (
      const bad of ["80", "0:80", "8080:65536", "8080:80/udp", "::1:8080:80", "localhost:8080:80", "a:b"]
    ) {
      const result = await ma(["create", "-p", bad, "--image", image, "bad-publish"])
      assert.strictEqual(result.code, 2, `${bad}: ${result.stderr}`)
      assert.include(errorOf(result).error.message, "--publish")
    }
    assert.deepStrictEqual(json(await ma(["list"])).workspaces, [])
  })
})

describe("published ports", () => {
  it("reaches a server in the guest from the host through -p", async () => {
    const port = await freePort()
    const created = await ma(["create", "-p", `${port}:80`, "--image", image, "web"])
    assert.strictEqual(created.code, 0, created.stderr)
    assert.deepStrictEqual(json(created).ports, [{
      hostIp: "127.0.0.1",
      hostPort: port,
      guestPort: 80,
      protocol: "tcp"
    }])
    const started = await ma(["start", "web"])
    assert.strictEqual(started.code, 0, started.stderr)
    await sh(
      "web",
      "mkdir -p /tmp/www && echo hello-through-publish > /tmp/www/index.html && httpd -p 80 -h /tmp/www"
    )
    let body = ""
    for (let attempt = 0; attempt < 50 && body === ""; attempt++) {
      body = await fetch(`http://127.0.0.1:${port}/index.html`).then((r) => r.text()).catch(() => "")
      if (body === "") await new Promise((resolve) => setTimeout(resolve, 100))
    }
    assert.strictEqual(body, "hello-through-publish\n")
    assert.strictEqual((await ma(["delete", "--force", "web"])).code, 0)
    assert.deepStrictEqual(qemuProcesses(), [])
  })

  it("refuses a host port already in use before the VM boots, naming the port, and leaves nothing", async () => {
    const port = await freePort()
    const server = await listen(port)
    try {
      assert.strictEqual((await ma(["create", "-p", `${port}:80`, "--image", image, "busy-port"])).code, 0)
      const start = await ma(["start", "busy-port"])
      assert.strictEqual(start.code, 1, start.stderr)
      const error = errorOf(start).error
      assert.strictEqual(error.kind, "conflict")
      assert.include(error.message, String(port))
      assert.deepStrictEqual(qemuProcesses(), [])
      const after = json(await ma(["inspect", "busy-port"]))
      assert.strictEqual(after.workspace.state, "prepared")
      assert.strictEqual((await ma(["delete", "busy-port"])).code, 0)

      const run = await ma(["run", "-p", `${port}:80`, image, "--", "true"])
      assert.strictEqual(errorOf(run).error.kind, "conflict", run.stderr)
      assert.deepStrictEqual(json(await ma(["list"])).workspaces, [])
      assert.deepStrictEqual(qemuProcesses(), [])
    } finally {
      server.close()
    }
  })
})

describe("named networks", () => {
  it("lets two members reach each other by name, keeps /etc/hosts current, and leaves nothing after kill -9", async () => {
    const made = json(await ma(["network", "create", "lab", "--subnet", "10.91.0.0/24"]))
    assert.strictEqual(made.subnet, "10.91.0.0/24")
    for (const name of ["alpha", "beta"]) {
      const created = await ma(["create", "--network", "lab", "--memory", "256", "--image", image, name])
      assert.strictEqual(created.code, 0, created.stderr)
    }
    const inspected = json(await ma(["network", "inspect", "lab"]))
    assert.deepStrictEqual(inspected.network.members, [
      { workspace: "alpha", ip: "10.91.0.2" },
      { workspace: "beta", ip: "10.91.0.3" }
    ])
    // Started at once: each must still end up in the other's /etc/hosts.
    for (const started of await Promise.all(["alpha", "beta"].map((name) => ma(["start", name])))) {
      assert.strictEqual(started.code, 0, started.stderr)
    }
    // The bridge is in the project's namespace, not on the host stack.
    const { links, namespaces } = leftovers()
    assert.strictEqual(namespaces.length, 1)
    assert.deepStrictEqual(links, [])

    assert.include(await sh("alpha", "ip addr"), "inet 10.91.0.2/24")
    const events = json(await ma(["events", "alpha"])).events as Array<{ type: string; detail: string }>
    // Both first starts were warm: a template's stand-in NIC took each member's MAC and address.
    assert.match(
      events.find((e) => e.type === "warm")?.detail ?? "",
      /^restored template /,
      JSON.stringify(events)
    )
    const betaLinks = await sh("beta", "ip link")
    assert.notInclude(betaLinks, "02:6d:61:ff:00:", `the stand-in's MAC is gone: ${betaLinks}`)
    assert.deepStrictEqual(events.filter((e) => e.type === "network").map((e) => e.detail), [
      "lab 10.91.0.2/24"
    ])
    assert.include(await sh("alpha", "cat /etc/hosts"), "10.91.0.3\tbeta")
    assert.include(await sh("beta", "cat /etc/hosts"), "10.91.0.2\talpha")
    assert.include(await sh("alpha", "ping -c1 -W5 beta"), "1 packets received")
    await sh(
      "beta",
      "mkdir -p /tmp/www && echo served-by-beta > /tmp/www/index.html && httpd -p 8000 -h /tmp/www"
    )
    assert.strictEqual(await sh("alpha", "wget -qO- http://beta:8000/index.html"), "served-by-beta\n")
    // Outbound NAT still works beside the second NIC.
    assert.include(await sh("alpha", "ip route"), "default via 10.0.2.2 dev eth0")

    // A member that stops drops out of the others' /etc/hosts; its address is kept for its next start.
    assert.strictEqual((await ma(["halt", "beta"])).code, 0)
    assert.notInclude(await sh("alpha", "cat /etc/hosts"), "beta")
    assert.strictEqual((await ma(["start", "beta"])).code, 0)
    assert.include(await sh("beta", "ip addr"), "inet 10.91.0.3/24")
    assert.include(await sh("alpha", "cat /etc/hosts"), "10.91.0.3\tbeta")

    const removeRefused = await ma(["network", "rm", "lab"])
    assert.strictEqual(errorOf(removeRefused).error.kind, "conflict")

    // A member whose QEMU is killed drops out of its peers' /etc/hosts once the runtime notices.
    const betaPid = json(await ma(["inspect", "beta"])).workspace.vm.pid as number
    process.kill(betaPid, "SIGKILL")
    const deadline = Date.now() + 20_000
    while ((await sh("alpha", "cat /etc/hosts")).includes("beta")) {
      assert.isBelow(Date.now(), deadline, "alpha's /etc/hosts still lists beta 20 s after its QEMU died")
      await new Promise((resolve) => setTimeout(resolve, 250))
    }

    // kill -9 of every QEMU, then delete: no tap, no bridge, no namespace.
    for (const pid of qemuProcesses()) process.kill(pid, "SIGKILL")
    for (const name of ["alpha", "beta"]) assert.strictEqual((await ma(["delete", name])).code, 0)
    assert.deepStrictEqual(leftovers(), { namespaces: [], links: [] })
    assert.deepStrictEqual(json(await ma(["network", "inspect", "lab"])).network.members, [])
    assert.strictEqual((await ma(["network", "rm", "lab"])).code, 0)
    assert.deepStrictEqual(json(await ma(["network", "ls"])).networks, [])
  })

  it("gives an isolated member only its named-network NIC", async () => {
    const quiet = json(await ma(["network", "create", "quiet"]))
    const out = json(
      await ma([
        "run",
        "--network",
        "isolated",
        "--network",
        "quiet",
        image,
        "--",
        "sh",
        "-c",
        "ls /sys/class/net; ip route"
      ])
    )
    assert.strictEqual(out.result.exitCode, 0, out.result.stderr)
    const [first, second, ...routes] = out.result.stdout.trim().split("\n")
    assert.deepStrictEqual([first, second], ["eth0", "lo"])
    // Its subnet's route and no default route: nothing leaves the segment.
    assert.strictEqual(routes.length, 1, routes.join("\n"))
    assert.match(
      routes[0]!,
      new RegExp(`^${quiet.subnet.replace(/\./g, "\\.")} dev eth0 .*src ${quiet.gateway.replace(/1$/, "2")}`)
    )
    // run deleted the member: its address is free again and the namespace is gone.
    assert.deepStrictEqual(json(await ma(["network", "inspect", "quiet"])).network.members, [])
    assert.deepStrictEqual(leftovers(), { namespaces: [], links: [] })
    assert.strictEqual((await ma(["network", "rm", "quiet"])).code, 0)
  })

  it("leaves no tap, bridge or namespace after kill -9 of the runtime and delete --force", async () => {
    assert.strictEqual((await ma(["network", "create", "crash"])).code, 0)
    assert.strictEqual(
      (await ma(["create", "--network", "crash", "--memory", "256", "--image", image, "gamma"])).code,
      0
    )
    assert.strictEqual((await ma(["start", "gamma"])).code, 0)
    assert.strictEqual(leftovers().namespaces.length, 1)
    const runtimePid = Number(
      NodeFs.readFileSync(NodePath.join(stateDir, "run", "runtime.pid"), "utf8").split(" ")[0]
    )
    process.kill(runtimePid, "SIGKILL")
    // The VM outlives the runtime (by design), and so does the segment it is on.
    assert.strictEqual(qemuProcesses().length, 1)
    assert.strictEqual(leftovers().namespaces.length, 1)
    assert.strictEqual((await ma(["delete", "--force", "gamma"])).code, 0)
    assert.deepStrictEqual(qemuProcesses(), [])
    assert.deepStrictEqual(leftovers(), { namespaces: [], links: [] })
    assert.strictEqual((await ma(["network", "rm", "crash"])).code, 0)
  })

  it("gc removes a namespace of this state directory that no live workspace needs", async () => {
    const orphan = `${namespacePrefix(NodePath.resolve(stateDir))}orphaned`
    ip(["netns", "add", orphan])
    const gc = json(await ma(["gc"]))
    assert.include(gc.removed, `netns ${orphan}`)
    assert.deepStrictEqual(leftovers().namespaces, [])
  })

  it("refuses an unknown network at create, before anything is made", async () => {
    const result = await ma(["create", "--network", "nowhere", "--image", image, "lost"])
    assert.strictEqual(errorOf(result).error.kind, "not_found")
    assert.include(errorOf(result).error.remediation, "network create nowhere")
    assert.deepStrictEqual(json(await ma(["list"])).workspaces, [])
  })
})

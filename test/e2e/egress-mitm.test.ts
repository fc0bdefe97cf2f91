/**
 * `--egress mitm` on a real QEMU microVM running Debian minbase, through the CLI. The test host (a
 * network namespace with a public-looking address, test/support/egressHosts.ts) serves HTTPS with a
 * certificate of a test CA the interceptor is told to trust (MICROAGENT_EGRESS_MITM_UPSTREAM_CA); its
 * answer echoes what reached it. The guest's client is apt's own HTTPS method (GnuTLS, checking the
 * system bundle), so a download succeeds only if the guest trusts the workspace's CA. Checked: the
 * guest's bundle holds this start's CA and no other; a request to a swap's domain (a swap config's,
 * and `--cred-swap openai`'s api.openai.com, which the test's resolver points at the test host)
 * reaches the upstream with the host-held key while the guest never held it; a passthrough name gets the upstream's own certificate
 * (so the guest's client refuses it); DNS over HTTPS is refused with its signal; the records say
 * which flows were intercepted; the interceptor goes with the VM.
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { issueLeaf, mintAuthority } from "../../src/bridge/Certificates.ts"
import { cliAsync, type CliResult, stopRuntime } from "../support/cli.ts"
import { type DnsServer, peerNamespace, startDnsServer } from "../support/egressHosts.ts"
import { hostArchitecture, minbaseTarball, pushSpec } from "../support/images.ts"
import { qemuProcessesMentioning } from "../support/kernel.ts"
import { requireTool, startRegistry, type TestRegistry } from "../support/registry.ts"

/** The test host's network: apart from egress.test's 198.51.100.0/24 (the files run side by side). */
const prefix = "198.18.40"
const key = "sk-host-held-0123456789"
const openaiKey = "sk-openai-host-held-9876"
let stateDir: string
let scratch: string
let registry: TestRegistry
let dns: DnsServer
let hostNs: string
let server: NodeChild.ChildProcess | undefined
let removePeer: (() => void) | undefined
let minbase: string
let swaps: string

const ma = (args: ReadonlyArray<string>): Promise<CliResult> =>
  cliAsync(args, {
    stateDir,
    env: {
      MICROAGENT_BACKEND: "qemu",
      MICROAGENT_EGRESS_DNS_UPSTREAM: `127.0.0.1:${dns.port}`,
      MICROAGENT_EGRESS_MITM_UPSTREAM_CA: NodePath.join(scratch, "upstream-ca.pem"),
      TEST_SWAP_KEY: key,
      TEST_OPENAI_KEY: openaiKey
    }
  })
const ok = async (args: ReadonlyArray<string>) => {
  const result = await ma(args)
  assert.strictEqual(result.code, 0, `${args.join(" ")}: ${result.stderr}`)
  return result
}
const sh = async (workspace: string, script: string) =>
  JSON.parse((await ok(["exec", workspace, "--json", "--", "bash", "-c", script])).stdout).result as {
    exitCode: number
    stdout: string
    stderr: string
  }
const records = async (workspace: string) =>
  JSON.parse((await ok(["egress", workspace, "--json"])).stdout).records as Array<Record<string, unknown>>

/** apt's HTTPS client, which checks the server's certificate against the guest's system bundle. */
const fetch = (url: string) =>
  `rm -f /tmp/got; /usr/lib/apt/apt-helper download-file '${url}' /tmp/got >/tmp/apt.log 2>&1; echo "rc=$?"; cat /tmp/got 2>/dev/null; cat /tmp/apt.log`

beforeAll(async () => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("ip", "iproute2")
  requireTool("iptables", "iptables")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-mitm-"))
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-mitm-scratch-"))
  // The upstream's own CA and certificates (the guest never trusts this CA; the interceptor does).
  const upstreamCa = mintAuthority("upstream test CA")
  NodeFs.writeFileSync(NodePath.join(scratch, "upstream-ca.pem"), upstreamCa.certPem)
  const leaves = Object.fromEntries(
    ["swap.test", "pass.test", "doh.test", "api.openai.com"].map((
      host
    ) => [host, issueLeaf(upstreamCa, host)])
  )
  dns = await startDnsServer({
    "swap.test": `${prefix}.10`,
    "pass.test": `${prefix}.10`,
    "doh.test": `${prefix}.10`,
    // The built-in provider's real name, answered here with the test host (nothing leaves this host).
    "api.openai.com": `${prefix}.10`
  })
  hostNs = `ma-mitm-host-${process.pid}`
  removePeer = peerNamespace(hostNs, prefix, `tm${String(process.pid).slice(-6)}`).remove
  // HTTPS on 443, a certificate per name (SNI); the answer echoes the request's name, path and key headers.
  server = NodeChild.spawn("ip", [
    "netns",
    "exec",
    hostNs,
    process.execPath,
    "-e",
    `const leaves = JSON.parse(process.env.LEAVES)
    const tls = require("node:tls")
    const contexts = Object.fromEntries(Object.entries(leaves).map(([h, l]) => [h, tls.createSecureContext({ cert: l.certPem, key: l.keyPem })]))
    require("node:https").createServer({ SNICallback: (name, done) => done(null, contexts[name]), ...leaves["swap.test"] }, (q, s) => {
      s.end(JSON.stringify({ sni: q.socket.servername, path: q.url, authorization: q.headers.authorization ?? null }) + "\\n")
    }).listen(443, "${prefix}.10", () => process.stdout.write("listening\\n"))`
  ], { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, LEAVES: JSON.stringify(leaves) } })
  await new Promise<void>((resolve, reject) => {
    server!.stdout!.on("data", (d) => String(d).includes("listening") && resolve())
    server!.on("exit", (code) => reject(new Error(`the test host's server exited (${code})`)))
  })
  swaps = NodePath.join(scratch, "swaps.yaml")
  NodeFs.writeFileSync(
    swaps,
    "swaps:\n  test-api:\n    type: static\n    domains: [swap.test]\n    header: Authorization\n    format: 'Bearer {key}'\n    key_ref: env:TEST_SWAP_KEY\n"
  )
  registry = await startRegistry()
  minbase = pushSpec(registry, scratch, "debian:minbase", [{
    layers: [NodeFs.readFileSync(minbaseTarball())],
    architecture: hostArchitecture,
    config: { Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], Cmd: ["bash"] }
  }]).ref
  await ok(["image", "pull", minbase])
  await ok([
    "create",
    "--image",
    minbase,
    "--egress",
    "mitm",
    "--egress-swap-config",
    swaps,
    "--egress-passthrough",
    "pass.test",
    "--cred-swap",
    "openai=env:TEST_OPENAI_KEY",
    "mt"
  ])
  await ok(["start", "mt"])
}, 900_000)

afterAll(async () => {
  await ma(["kill", "mt"])
  stopRuntime(stateDir)
  for (const pid of qemuProcessesMentioning(stateDir)) process.kill(pid, "SIGKILL")
  server?.kill("SIGKILL")
  removePeer?.()
  dns?.close()
  await registry?.stop()
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
  NodeFs.rmSync(scratch, { recursive: true, force: true })
})

describe("egress mitm", () => {
  it(
    "installs this start's CA in the guest and swaps the host-held key into requests to its domain",
    async () => {
      const hostCa = NodeFs.readFileSync(NodePath.join(stateDir, "run", "mt", "egress-ca.pem"), "utf8").trim()
      const bundle = await sh(
        "mt",
        'cat /etc/ssl/certs/ca-certificates.crt; echo; echo "NODE=$NODE_EXTRA_CA_CERTS"'
      )
      assert.include(bundle.stdout, hostCa, "the guest's bundle holds the interceptor's CA")
      // The image had no bundle: the CA is the one certificate the guest trusts, nothing else new.
      assert.strictEqual(bundle.stdout.split("BEGIN CERTIFICATE").length - 1, 1, bundle.stdout)
      assert.include(bundle.stdout, "NODE=/usr/local/share/ca-certificates/microagent-egress.crt")

      const got = await sh("mt", fetch("https://swap.test/v1/models"))
      assert.include(got.stdout, "rc=0", got.stdout)
      const echoed = JSON.parse(got.stdout.split("\n").find((l) => l.startsWith("{"))!)
      assert.deepStrictEqual(echoed, { sni: "swap.test", path: "/v1/models", authorization: `Bearer ${key}` })
      // The key lives on the host only: nothing in the guest's environment, secrets or files holds it.
      const leak = await sh(
        "mt",
        `grep -rl '${key}' /run /etc /root /proc/self/environ 2>/dev/null; env | grep -c '${key}'; true`
      )
      assert.strictEqual(leak.stdout.trim(), "0", leak.stdout)

      const log = await records("mt")
      const flow = log.find((r) => r.event === "egress_allow" && r.host === "swap.test")
      assert.strictEqual(flow?.mitm, true, JSON.stringify(log))
      const request = log.find((r) => r.event === "egress_mitm_request" && r.host === "swap.test")
      assert.deepStrictEqual(request?.swaps, ["test-api"], JSON.stringify(log))
      assert.strictEqual(request?.status, 200)
      assert.notInclude(JSON.stringify(log), key, "the audit log names swaps, never values")
    },
    300_000
  )

  it("--cred-swap openai sets the provider's bearer key on requests to its API", async () => {
    const got = await sh("mt", fetch("https://api.openai.com/v1/chat/completions"))
    assert.include(got.stdout, "rc=0", got.stdout)
    const echoed = JSON.parse(got.stdout.split("\n").find((l) => l.startsWith("{"))!)
    assert.deepStrictEqual(echoed, {
      sni: "api.openai.com",
      path: "/v1/chat/completions",
      authorization: `Bearer ${openaiKey}`
    })
    const leak = await sh("mt", `env | grep -c '${openaiKey}'; true`)
    assert.strictEqual(leak.stdout.trim(), "0")
    const request = (await records("mt")).find((r) =>
      r.event === "egress_mitm_request" && r.host === "api.openai.com"
    )
    assert.deepStrictEqual(request?.swaps, ["openai"])
  }, 300_000)

  it("leaves a passthrough name's TLS alone: the guest sees the upstream's own certificate", async () => {
    const got = await sh("mt", fetch("https://pass.test/"))
    // The upstream's CA is not the guest's: apt refuses the certificate it was shown.
    assert.notInclude(got.stdout, "rc=0", got.stdout)
    assert.match(got.stdout, /certificate|Certificate|verif/, got.stdout)
    const log = await records("mt")
    const flow = log.find((r) => r.event === "egress_allow" && r.host === "pass.test")
    assert.isDefined(flow, JSON.stringify(log))
    assert.isUndefined(flow!.mitm)
  }, 300_000)

  it("refuses DNS over HTTPS with its signal", async () => {
    const got = await sh(
      "mt",
      fetch("https://doh.test/dns-query?dns=AAABAAABAAAAAAAAB2V4YW1wbGUDY29tAAABAAE")
    )
    assert.notInclude(got.stdout, "rc=0", got.stdout)
    const log = await records("mt")
    const denied = log.find((r) => r.event === "egress_deny" && r.signal === "dns-over-https")
    assert.strictEqual(denied?.host, "doh.test", JSON.stringify(log))
  }, 300_000)

  it("dispatch under mitm answers with a receipt of the intercepted flows", async () => {
    const out = JSON.parse(
      (await ok([
        "dispatch",
        "--json",
        "--egress",
        "mitm",
        "--egress-swap-config",
        swaps,
        minbase,
        "--",
        "bash",
        "-c",
        fetch("https://swap.test/receipt")
      ])).stdout
    )
    assert.include(out.result.stdout, "rc=0", out.result.stdout)
    assert.include(out.result.stdout, `Bearer ${key}`)
    assert.strictEqual(out.receipt.mode, "mitm")
    assert.isAbove(out.receipt.allowByHost["swap.test"] ?? 0, 0, JSON.stringify(out.receipt))
    assert.isAbove(out.receipt.bytesIn, 0)
  }, 300_000)

  it("ends the interceptor with the VM", async () => {
    const pidFile = NodePath.join(stateDir, "run", "mt", "egress-mitm.pid")
    const pid = Number(NodeFs.readFileSync(pidFile, "utf8").split(" ")[0])
    assert.isTrue(NodeFs.existsSync(`/proc/${pid}`))
    await ok(["halt", "mt"])
    const deadline = Date.now() + 10_000
    while (NodeFs.existsSync(`/proc/${pid}`) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100))
    }
    assert.isFalse(NodeFs.existsSync(`/proc/${pid}`), "the interceptor outlived its VM")
  }, 300_000)
})

/**
 * The credential broker on a real QEMU microVM, through the CLI. One workspace with `--network
 * isolated` (no NIC: the endpoints ride guest channels) and two endpoints: an HTTPS test upstream with
 * its own CA (`ca=`), a brokered key and request capture; a plain HTTP one with no secret. The upstreams
 * record what reaches them on the host and never echo a header back.
 *
 * - The upstream receives the real key where the guest wrote `@secret:API_KEY` (a header and the
 *   query), under the upstream's path; the guest's environment, files, /run/secrets and whole memory
 *   (QMP `pmemsave`) never hold it, while an ordinary `--secret` is still delivered.
 * - A body's references are swapped too, with the body's new length; a name the endpoint does not hold
 *   stays as written there.
 * - A reference the endpoint does not hold, a target that climbs out of the upstream's path and a
 *   request that is not HTTP are refused before anything goes upstream, and the broker goes on serving.
 * - The audit (`broker-access.jsonl`, also in `egress`) names secrets but never holds a value; the capture
 *   keeps the request as the guest sent it, owner-only.
 * - A third endpoint is the proxy: CONNECT through it reaches a public-looking test host (a network
 *   namespace) and is refused for the host's loopback and the host's own address; the other endpoints
 *   answer CONNECT with 405.
 * - A fourth endpoint is `assurance=semantic` with a grant file: only the grant's operations go
 *   upstream (an undeclared query parameter or header, a value off its pattern, a route or a body the
 *   grant does not describe are refused before anything is sent), and an answer reaches the guest only
 *   if its operation's `response` allows it and it holds no credential of the endpoint (an upstream
 *   that echoes the key is refused, and the guest never sees it).
 * - Halt ends the broker; the next start resolves the key again.
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeHttp from "node:http"
import * as NodeHttps from "node:https"
import * as NodeNet from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { defaultImage } from "../../src/layers/image/BuiltinImages.ts"
import { cliAsync, type CliResult, stopRuntime } from "../support/cli.ts"
import { startTestHost, type TestHost } from "../support/egressHosts.ts"
import { qemuProcessesMentioning } from "../support/kernel.ts"
import { requireTool } from "../support/registry.ts"

let stateDir: string
let scratch: string
const key = `brk-${process.pid}-zq7-live-value`
const granted = `grt-${process.pid}-x4v-live-value`
const plain = `plain-${process.pid}-delivered`
const env = {
  MICROAGENT_BACKEND: "qemu",
  BROKER_TEST_KEY: key,
  BROKER_TEST_GRANTED: granted,
  PLAIN_TEST_VALUE: plain
}

/** The semantic endpoint's grant: what the guest may do with GRANTED, and what may come back. */
const grantYaml = `
operations:
  - name: list-models
    effect: read
    method: GET
    route: /v1/models
    query:
      - { name: limit, pattern: "[0-9]{1,3}" }
    headers:
      - { name: authorization, required: true, values: ["Bearer @secret:GRANTED"] }
      - { name: user-agent }
    response:
      statuses: [200]
      contentTypes: [application/json]
      json: { type: object, properties: { path: string }, required: [path], additionalProperties: false }
  - name: echo
    effect: read
    method: GET
    route: /v1/echo/{word}
    headers: [{ name: user-agent }]
  - name: strict
    effect: read
    method: GET
    route: /v1/strict
    headers: [{ name: user-agent }]
    response: { json: { type: object, required: [id] } }
  - name: post-note
    effect: write
    method: POST
    route: /v1/notes
    headers:
      - { name: authorization, values: ["Bearer @secret:GRANTED"] }
      - { name: user-agent }
    body:
      maxBytes: 64
      contentTypes: [application/json]
      json: { type: object, properties: { text: string }, required: [text], additionalProperties: false }
`
const ma = (args: ReadonlyArray<string>, extraEnv: Record<string, string> = {}): Promise<CliResult> =>
  cliAsync(args, { stateDir, env: { ...env, ...extraEnv } })
const ok = async (args: ReadonlyArray<string>, extraEnv: Record<string, string> = {}) => {
  const result = await ma(args, extraEnv)
  assert.strictEqual(result.code, 0, `${args.join(" ")}: ${result.stderr}`)
  return result
}
const json = (result: CliResult) => JSON.parse(result.stdout)
const sh = async (script: string) => {
  const out = json(await ok(["exec", "brk", "--", "sh", "-c", script])).result
  return `${out.stdout}${out.stderr}` as string
}

interface Seen {
  readonly method: string
  readonly url: string
  readonly headers: NodeHttp.IncomingHttpHeaders
  readonly body: string
}
const seenTls: Array<Seen> = []
const seenPlain: Array<Seen> = []
let tlsServer: NodeHttps.Server
let plainServer: NodeHttp.Server
let tlsPort = 0
/** A public-looking host (a namespace on 198.18.42.0/24) for the proxy endpoint's CONNECT tunnel. */
let testHost: TestHost
let plainPort = 0

/** Records the request; answers with its path only (no header, no query: the guest must not see the key). */
const recorder =
  (seen: Array<Seen>) => (request: NodeHttp.IncomingMessage, response: NodeHttp.ServerResponse) => {
    const body: Array<Buffer> = []
    request.on("data", (chunk: Buffer) => body.push(chunk))
    request.on("end", () => {
      seen.push({
        method: request.method ?? "",
        url: request.url ?? "",
        headers: request.headers,
        body: Buffer.concat(body).toString("utf8")
      })
      // The path without the query, which may hold the key.
      const path = (request.url ?? "").split("?")[0]
      response.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ path }))
    })
  }

const listen = (server: NodeNet.Server) =>
  new Promise<number>((resolve) =>
    server.listen(0, "127.0.0.1", () => resolve((server.address() as NodeNet.AddressInfo).port))
  )

/** Guest RAM as the VMM holds it, through QMP `pmemsave` (512 MiB from physical address 0). */
const guestMemory = async (file: string): Promise<Buffer> => {
  const socket = NodeNet.connect(NodePath.join(stateDir, "run", "brk", "qmp.sock"))
  const lines: Array<string> = []
  let buffered = ""
  socket.on("data", (d) => {
    buffered += d.toString("utf8")
    let nl: number
    while ((nl = buffered.indexOf("\n")) >= 0) {
      lines.push(buffered.slice(0, nl))
      buffered = buffered.slice(nl + 1)
    }
  })
  const waitFor = async (match: (line: string) => boolean) => {
    const deadline = Date.now() + 60_000
    while (Date.now() < deadline) {
      const found = lines.find(match)
      if (found !== undefined) return found
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
    throw new Error(`QMP: no answer (${lines.join(" | ")})`)
  }
  await waitFor((l) => l.includes("QMP"))
  socket.write(`${JSON.stringify({ execute: "qmp_capabilities" })}\n`)
  await waitFor((l) => l.includes("return"))
  lines.length = 0
  socket.write(
    `${
      JSON.stringify({ execute: "pmemsave", arguments: { val: 0, size: 512 * 1024 * 1024, filename: file } })
    }\n`
  )
  const answer = await waitFor((l) => l.includes("return") || l.includes("error"))
  socket.destroy()
  assert.include(answer, "return", answer)
  return NodeFs.readFileSync(file)
}

beforeAll(async () => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("mke2fs", "e2fsprogs")
  requireTool("openssl", "openssl")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-broker-"))
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-broker-scratch-"))
  const keyFile = NodePath.join(scratch, "upstream.key")
  const certFile = NodePath.join(scratch, "upstream.pem")
  NodeChild.execFileSync("openssl", [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-days",
    "2",
    "-subj",
    "/CN=127.0.0.1",
    "-addext",
    "subjectAltName=IP:127.0.0.1",
    "-keyout",
    keyFile,
    "-out",
    certFile
  ], { stdio: "ignore" })
  tlsServer = NodeHttps.createServer(
    { key: NodeFs.readFileSync(keyFile), cert: NodeFs.readFileSync(certFile) },
    recorder(seenTls)
  )
  plainServer = NodeHttp.createServer(recorder(seenPlain))
  tlsPort = await listen(tlsServer)
  plainPort = await listen(plainServer)
  testHost = await startTestHost(`ma-brk-host-${process.pid}`, { prefix: "198.18.42" })
})

afterAll(() => {
  testHost?.close()
  stopRuntime(stateDir)
  for (const pid of qemuProcessesMentioning(`${stateDir}/`)) process.kill(pid, "SIGKILL")
  tlsServer?.close()
  plainServer?.close()
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
  NodeFs.rmSync(scratch, { recursive: true, force: true })
})

const brokerPid = () => {
  const [pid] = NodeFs.readFileSync(NodePath.join(stateDir, "run", "brk", "broker.pid"), "utf8").split(" ")
  return Number(pid)
}
const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

describe("the credential broker on a real microVM", () => {
  it(
    "swaps the key in on the host, where the guest never holds it, and refuses what it must",
    async () => {
      const cert = NodePath.join(scratch, "upstream.pem")
      const grantFile = NodePath.join(scratch, "grant.yaml")
      NodeFs.writeFileSync(grantFile, grantYaml)
      const created = json(
        await ok([
          "create",
          "--image",
          defaultImage,
          "--network",
          "isolated",
          "--secret",
          "PLAIN=env:PLAIN_TEST_VALUE",
          "--broker",
          `upstream=https://127.0.0.1:${tlsPort}/base;secret=API_KEY=env:BROKER_TEST_KEY;base-url-env=API_BASE=/v1;ca=${cert};capture`,
          "--broker",
          `upstream=http://127.0.0.1:${plainPort};base-url-env=PLAIN_BASE`,
          "--broker",
          `upstream=http://127.0.0.1:${plainPort};proxy;connect-allow=${testHost.address}:8080`,
          "--broker",
          `upstream=https://127.0.0.1:${tlsPort}/base;secret=GRANTED=env:BROKER_TEST_GRANTED;assurance=semantic;grant=${grantFile};ca=${cert}`,
          "brk",
          "--json"
        ])
      )
      assert.deepStrictEqual(
        created.brokers.map((b: { guestPort: number; secrets: Array<string> }) => [b.guestPort, b.secrets]),
        [[18888, ["API_KEY"]], [18889, []], [18890, []], [18891, ["GRANTED"]]]
      )
      assert.deepStrictEqual(
        created.secrets.map((s: { name: string; use?: string }) => [s.name, s.use ?? "guest"]),
        [["PLAIN", "guest"], ["API_KEY", "broker"], ["GRANTED", "broker"]]
      )
      await ok(["start", "brk"])
      // Warm: the template has both endpoints' channels; the agent started their forwarders after the restore.
      const { events: startEvents } = json(await ok(["events", "brk", "--json"])) as {
        events: Array<{ type: string; detail: string }>
      }
      assert.match(
        startEvents.find((e) => e.type === "warm")?.detail ?? "",
        /^restored template /,
        JSON.stringify(startEvents)
      )

      // The guest's view: endpoint URLs, the ordinary secret, and no key anywhere.
      const environment = await sh("env")
      assert.include(environment, "API_BASE=http://127.0.0.1:18888/v1")
      assert.include(environment, "PLAIN_BASE=http://127.0.0.1:18889")
      assert.include(environment, "MICROAGENT_BROKER_URL=http://127.0.0.1:18888")
      assert.strictEqual((await sh("ls /run/secrets")).trim(), "PLAIN")
      assert.strictEqual(await sh("cat /run/secrets/PLAIN"), plain)

      // Through the broker: the key lands upstream, in the header and the query, under /base.
      const answer = await sh(
        `wget -q -O - --header 'Authorization: Bearer @secret:API_KEY' "$API_BASE/models?key=@secret:API_KEY"`
      )
      assert.deepStrictEqual(JSON.parse(answer), { path: "/base/v1/models" })
      assert.strictEqual(seenTls.at(-1)?.url, `/base/v1/models?key=${key}`)
      assert.strictEqual(seenTls.at(-1)?.headers.authorization, `Bearer ${key}`)
      assert.strictEqual(seenTls.at(-1)?.headers.host, `127.0.0.1:${tlsPort}`)
      assert.deepStrictEqual(JSON.parse(await sh(`wget -q -O - "$PLAIN_BASE/ping"`)), { path: "/ping" })
      assert.strictEqual(seenPlain.length, 1)

      // Refused before anything goes upstream, and the broker goes on serving.
      const before = seenTls.length
      assert.include(
        await sh(`wget -q -O - --header 'X-Key: @secret:PLAIN' "$API_BASE/models" 2>&1; echo " exit=$?"`),
        "403"
      )
      assert.include(
        await sh(`wget -q -O - --header 'X-Key: @secret:API_KEY' "$PLAIN_BASE/x" 2>&1; echo " exit=$?"`),
        "403"
      )
      const raw = (request: string) =>
        sh(`printf '${request}' | nc -w 5 127.0.0.1 18888 | head -1`).then((line) => line.trim())
      assert.match(await raw("GET /../../admin HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"), /^HTTP\/1\.1 400/)
      assert.match(
        await raw("GET http://169.254.169.254/ HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"),
        /^HTTP\/1\.1 400/
      )
      assert.match(await raw("NOT HTTP AT ALL\\r\\n\\r\\n"), /^HTTP\/1\.1 400/)
      assert.strictEqual(seenTls.length, before)
      assert.strictEqual(seenPlain.length, 1)
      assert.deepStrictEqual(JSON.parse(await sh(`wget -q -O - "$API_BASE/again"`)), {
        path: "/base/v1/again"
      })

      // Nowhere in the guest: memory (every page), then files (on its disk and tmpfs).
      const memory = await guestMemory(NodePath.join(scratch, "guest.mem"))
      assert.isAbove(memory.length, 256 * 1024 * 1024)
      assert.isTrue(memory.includes(Buffer.from(plain)), "the memory dump holds what the guest was given")
      assert.isFalse(memory.includes(Buffer.from(key)), "the key is not in guest memory")
      NodeFs.rmSync(NodePath.join(scratch, "guest.mem"))
      // (After the memory check: this command line holds the key itself.)
      assert.strictEqual(
        (await sh(
          // Regular files only: busybox's grep -r follows the hundreds of symlinks to busybox itself.
          `for d in /*; do case $d in /proc|/sys|/dev) ;; *) find "$d" -type f -exec grep -ls '${key}' {} + ;; esac; done; echo done`
        )).trim(),
        "done"
      )

      // The audit: names, never values; the capture: what the guest sent, owner-only.
      const auditFile = NodePath.join(stateDir, "workspaces", "brk", "broker-access.jsonl")
      const audit = NodeFs.readFileSync(auditFile, "utf8")
      assert.notInclude(audit, key)
      assert.strictEqual(NodeFs.statSync(auditFile).mode & 0o777, 0o600)
      const records = audit.trim().split("\n").map((l) => JSON.parse(l))
      const allowed = records.filter((r) => r.event === "broker_request_allow")
      assert.deepStrictEqual(allowed.map((r) => [r.endpoint, r.status, r.secret_refs]), [
        [0, 200, ["API_KEY"]],
        [1, 200, []],
        [0, 200, []]
      ])
      const denied = records.filter((r) => r.event === "broker_request_deny")
      assert.deepStrictEqual(denied.map((r) => [r.endpoint, r.status, r.rule]), [
        [0, 403, "unresolved-secret-ref"],
        [1, 403, "unresolved-secret-ref"],
        [0, 400, "bad-target"],
        [0, 400, "bad-target"],
        [0, 400, "malformed-request"]
      ])
      const egress = json(await ok(["egress", "brk", "--json"]))
      const events = egress.records.map((r: { event: string }) => r.event)
      assert.includeMembers(events, ["broker_start", "broker_request_allow", "broker_request_deny"])
      const captureFile = NodePath.join(stateDir, "workspaces", "brk", "broker-capture.jsonl")
      const capture = NodeFs.readFileSync(captureFile, "utf8")
      assert.include(capture, "Bearer @secret:API_KEY")
      assert.notInclude(capture, key)
      assert.strictEqual(NodeFs.statSync(captureFile).mode & 0o777, 0o600)

      // The proxy endpoint tunnels CONNECT to an outside address only; the others answer 405.
      assert.include(await sh('echo "$HTTPS_PROXY $no_proxy"'), "http://127.0.0.1:18890 127.0.0.1,localhost")
      const connect = (port: number, target: string, then = "") =>
        sh(
          `printf 'CONNECT ${target} HTTP/1.1\\r\\nHost: ${target}\\r\\n\\r\\n${then}' | nc -w 5 127.0.0.1 ${port}; true`
        )
      const tunnel = await connect(18890, `${testHost.address}:8080`, "GET / HTTP/1.0\\r\\n\\r\\n")
      assert.include(tunnel, "200 Connection Established", tunnel)
      assert.include(tunnel, "hello-from-test-host", tunnel)
      const inside = await connect(18890, `127.0.0.1:${plainPort}`)
      assert.include(inside, "403", inside)
      const hostItself = await connect(18890, `${testHost.hostSide}:${plainPort}`)
      assert.include(hostItself, "403", hostItself)
      // Public, but not on the endpoint's connect-allow (another port of the same host).
      const offList = await connect(18890, `${testHost.address}:8081`)
      assert.include(offList, "403", offList)
      const notProxy = await connect(18888, `${testHost.address}:8080`)
      assert.include(notProxy, "405", notProxy)
      const tunnelled = NodeFs.readFileSync(auditFile, "utf8").trim().split("\n").map((l) => JSON.parse(l))
        .filter((r) => r.mode === "connect")
      assert.deepStrictEqual(tunnelled.map((r) => [r.event, r.endpoint, r.status, r.rule ?? null]), [
        ["broker_request_allow", 2, 200, null],
        ["broker_request_deny", 2, 403, "inside"],
        ["broker_request_deny", 2, 403, "inside"],
        ["broker_request_deny", 2, 403, "not-allowlisted"],
        ["broker_request_deny", 0, 405, "connect-disabled"]
      ])
      assert.isAbove(tunnelled[0].bytes_in, 20)
      assert.strictEqual(seenPlain.filter((s) => s.method === "CONNECT").length, 0)

      // A body's references are swapped too (its length follows); a name the endpoint lacks stays as written.
      const posted0 = await sh(
        `wget -q -O - --header 'Content-Type: application/json' --post-data '{"k":"@secret:API_KEY","q":"@secret:NOPE"}' "$API_BASE/bodies"`
      )
      assert.deepStrictEqual(JSON.parse(posted0), { path: "/base/v1/bodies" })
      const bodySeen = seenTls.at(-1)!
      assert.strictEqual(bodySeen.body, `{"k":"${key}","q":"@secret:NOPE"}`)
      assert.strictEqual(Number(bodySeen.headers["content-length"]), Buffer.byteLength(bodySeen.body))

      // The semantic endpoint: the grant's operations only, and answers that fit them.
      const semantic = (args: string) => sh(`wget -q -O - ${args} 2>&1; echo " exit=$?"`)
      const auth = `--header 'Authorization: Bearer @secret:GRANTED'`
      const listed = await semantic(`${auth} 'http://127.0.0.1:18891/v1/models?limit=5'`)
      assert.include(listed, '{"path":"/base/v1/models"}', listed)
      assert.strictEqual(seenTls.at(-1)?.url, "/base/v1/models?limit=5")
      assert.strictEqual(seenTls.at(-1)?.headers.authorization, `Bearer ${granted}`)
      assert.strictEqual(seenTls.at(-1)?.headers["accept-encoding"], "identity")
      const sentBefore = seenTls.length
      for (
        const refused of [
          `${auth} 'http://127.0.0.1:18891/v1/models?limit=5&debug=1'`,
          `${auth} 'http://127.0.0.1:18891/v1/models?limit=all'`,
          `${auth} --header 'X-Extra: 1' 'http://127.0.0.1:18891/v1/models'`,
          `--header 'Authorization: Bearer literal' 'http://127.0.0.1:18891/v1/models'`,
          `${auth} 'http://127.0.0.1:18891/v1/admin'`,
          `${auth} --header 'Content-Type: application/json' --post-data '{"text":"hi","more":1}' http://127.0.0.1:18891/v1/notes`
        ]
      ) {
        assert.include(await semantic(refused), "403", refused)
      }
      assert.strictEqual(seenTls.length, sentBefore, "nothing refused went upstream")
      const posted = await semantic(
        `${auth} --header 'Content-Type: application/json' --post-data '{"text":"hi"}' http://127.0.0.1:18891/v1/notes`
      )
      assert.include(posted, '{"path":"/base/v1/notes"}', posted)
      // The upstream echoes the key (in its path): the answer is held back, the guest never sees it.
      const echoed = await semantic(`'http://127.0.0.1:18891/v1/echo/@secret:GRANTED'`)
      assert.include(echoed, "502", echoed)
      assert.notInclude(echoed, granted)
      assert.strictEqual(seenTls.at(-1)?.url, `/base/v1/echo/${granted}`)
      const strict = await semantic(`'http://127.0.0.1:18891/v1/strict'`)
      assert.include(strict, "502", strict)
      const decisions = NodeFs.readFileSync(auditFile, "utf8").trim().split("\n").map((l) => JSON.parse(l))
        .filter((r) => r.endpoint === 3)
      assert.notInclude(JSON.stringify(decisions), granted)
      assert.deepStrictEqual(
        decisions.map((r) => [r.event, r.status, r.rule ?? r.operation, r.assurance]),
        [
          ["broker_request_allow", 200, "list-models", "semantic"],
          ["broker_request_deny", 403, "query-undeclared", "semantic"],
          ["broker_request_deny", 403, "query-value", "semantic"],
          ["broker_request_deny", 403, "header-undeclared", "semantic"],
          ["broker_request_deny", 403, "header-value", "semantic"],
          ["broker_request_deny", 403, "no-operation", "semantic"],
          ["broker_request_deny", 403, "body-schema", "semantic"],
          ["broker_request_allow", 200, "post-note", "semantic"],
          ["broker_request_deny", 502, "credential-disclosure", "semantic"],
          ["broker_request_deny", 502, "response-schema", "semantic"]
        ]
      )
      assert.deepStrictEqual(decisions[7].secret_refs, ["GRANTED"])

      // Halt ends the broker; the next start resolves the key again (here: a new value).
      const first = brokerPid()
      assert.isTrue(alive(first))
      await ok(["halt", "brk"])
      const deadline = Date.now() + 10_000
      while (alive(first) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100))
      assert.isFalse(alive(first), "the broker ends with its VM")
      const rotated = `${key}-rotated`
      await ok(["start", "brk", "--cold"], { BROKER_TEST_KEY: rotated })
      await sh(`wget -q -O - --header 'Authorization: Bearer @secret:API_KEY' "$API_BASE/after"`)
      assert.strictEqual(seenTls.at(-1)?.headers.authorization, `Bearer ${rotated}`)
      await ok(["delete", "--force", "brk"])
    },
    600_000
  )

  it("refuses what the broker does not do, and a secret without a value, with clear errors", async () => {
    const bad = async (spec: string, words: string) => {
      const result = await ma(["create", "--image", defaultImage, "--broker", spec, "nope", "--json"])
      assert.strictEqual(result.code, 2, result.stderr)
      assert.include(result.stderr + result.stdout, words)
    }
    await bad("upstream=ftp://x", "only http:// and https://")
    await bad("upstream=https://user:pw@x", "holds no credentials")
    await bad("secret=A=env:B", "needs upstream=URL")
    await bad("upstream=https://x;proxy=on", "takes no value")
    const twoProxies = await ma([
      "create",
      "--image",
      defaultImage,
      "--broker",
      "upstream=https://x;proxy",
      "--broker",
      "upstream=https://y;proxy",
      "nope",
      "--json"
    ])
    assert.strictEqual(twoProxies.code, 2, twoProxies.stderr)
    assert.include(twoProxies.stderr + twoProxies.stdout, "only one broker endpoint may be the proxy")
    await bad("upstream=https://x;assurance=semantic", "needs a grant file")
    const grant = NodePath.join(scratch, "bad-grant.yaml")
    NodeFs.writeFileSync(
      grant,
      "operations:\n  - {name: a, effect: read, method: GET, route: /x, extra: 1}\n"
    )
    await bad(`upstream=https://x;assurance=semantic;grant=${grant}`, "bad-grant.yaml")
    const good = NodePath.join(scratch, "good-grant.yaml")
    NodeFs.writeFileSync(good, "operations:\n  - {name: a, effect: read, method: GET, route: /x}\n")
    await bad(`upstream=http://x;assurance=semantic;grant=${good}`, "https:// upstream only")
    await bad(`upstream=https://x;assurance=semantic;grant=${good};proxy`, "no CONNECT tunnel")
    await bad(`upstream=https://x;grant=${good}`, "goes with assurance=semantic")
    await bad("upstream=https://x;secret=A=env:B;secret=A=env:C", "given twice")
    await bad(`upstream=https://x;ca=${NodePath.join(scratch, "missing.pem")}`, "missing.pem")
    // The caller resolves the value (at create to check it, at every start to send it): unset fails.
    await bad("upstream=https://x;secret=K=env:UNSET_VAR_X", "UNSET_VAR_X")
    const names = json(await ok(["list", "--json"])).workspaces.map((w: { name: string }) => w.name)
    assert.notInclude(names, "nope")
  })
})

/**
 * Keeping agent workspaces up on real QEMU microVMs, through the CLI: a service the guest restarts
 * with back-off, a health check that fails the workspace, `supervise` restarting it under
 * `on-failure` until `--max-restarts` and not under `never`, an `httpGet` check against a published
 * port, and `supervise --install`'s unit. One workspace carries the service, the exec check and the
 * restarts; a second one, `never`; a third, the HTTP check.
 */
import * as NodeFs from "node:fs"
import * as NodeNet from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { defaultImage } from "../../src/layers/image/BuiltinImages.ts"
import { cliAsync, type CliResult, stopRuntime } from "../support/cli.ts"
import { qemuProcessesMentioning } from "../support/kernel.ts"
import { requireTool } from "../support/registry.ts"

let stateDir: string
let scratch: string

const ma = (args: ReadonlyArray<string>, env: Record<string, string> = {}): Promise<CliResult> =>
  cliAsync(args, { stateDir, env: { MICROAGENT_BACKEND: "qemu", ...env } })

const json = (result: CliResult) => {
  assert.strictEqual(result.stderr.includes("internal error"), false, result.stderr)
  assert.isAbove(result.stdout.length, 0, `no output; exit ${result.code}; stderr: ${result.stderr}`)
  return JSON.parse(result.stdout)
}

const ok = async (args: ReadonlyArray<string>, env: Record<string, string> = {}) => {
  const result = await ma(args, env)
  assert.strictEqual(result.code, 0, `${args.join(" ")}: exit ${result.code}; ${result.stderr}`)
  return result
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls until `check` answers a value (bounded: a broken guest fails the test rather than hanging it). */
const until = async <A>(what: string, check: () => Promise<A | undefined>, tries = 120): Promise<A> => {
  for (let i = 0; i < tries; i++) {
    const value = await check()
    if (value !== undefined) return value
    await sleep(1000)
  }
  throw new Error(`gave up waiting for ${what}`)
}

const record = async (name: string) => json(await ok(["inspect", name, "--json"])).workspace

const eventsOf = async (name: string, type: string): Promise<Array<string>> =>
  (json(await ok(["events", name, "--json"])).events as Array<{ type: string; detail: string }>)
    .filter((e) => e.type === type).map((e) => e.detail)

/** The service's pid in the guest, once it runs and differs from `not`. */
const servicePid = (name: string, not?: string) =>
  until(`the service of ${name} to run`, async () => {
    const result = await ma([
      "exec",
      name,
      "--",
      "sh",
      "-c",
      "p=$(cat /run/microagent/service/pid) && kill -0 $p && echo $p"
    ])
    const pid = result.code === 0 ? json(result).result?.stdout?.trim() ?? result.stdout.trim() : ""
    return pid !== "" && pid !== not ? pid : undefined
  })

beforeAll(() => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("mke2fs", "e2fsprogs")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-supervise-"))
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-supervise-scratch-"))
})

afterAll(() => {
  stopRuntime(stateDir)
  for (const pid of qemuProcessesMentioning(stateDir)) process.kill(pid, "SIGKILL")
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
  NodeFs.rmSync(scratch, { recursive: true, force: true })
})

describe("services, health checks and supervise on real microVMs", () => {
  it("a killed service comes back with a growing delay; a failing check gets the VM killed and supervise restarts it until --max-restarts", async () => {
    const spec = NodePath.join(scratch, "keeper.yaml")
    NodeFs.writeFileSync(
      spec,
      [
        `image: ${defaultImage}`,
        "restart: on-failure",
        "service: echo serving; sleep 100000",
        "health:",
        "  exec: [sh, -c, 'test ! -e /root/sick']",
        "  intervalSeconds: 1",
        "  timeoutSeconds: 20",
        "  retries: 2"
      ].join("\n") + "\n"
    )
    await ok(["create", "--file", spec, "keeper"])
    await ok(["start", "keeper"])

    // Killed inside the guest, twice: restarted after 1 s, then after 2 s.
    const first = await servicePid("keeper")
    await ok(["exec", "keeper", "--", "kill", first])
    const second = await servicePid("keeper", first)
    await ok(["exec", "keeper", "--", "kill", second])
    await servicePid("keeper", second)
    const status = await until("two restarts in the record", async () => {
      const ws = await record("keeper")
      return ws.serviceStatus?.restarts === 2 ? ws.serviceStatus : undefined
    })
    assert.deepInclude(status, { restarts: 2, lastExitCode: 143, lastDelaySeconds: 2 })
    const restarts = (await eventsOf("keeper", "service")).slice(1)
    assert.deepStrictEqual(restarts.map((d) => d.replace(/after \d+s/, "after Ns")), [
      "exited 143 after Ns; restart 1 in 1s",
      "exited 143 after Ns; restart 2 in 2s"
    ])

    // Supervised: the check starts failing (the marker is on the disk, so it fails after every boot).
    const supervised = ma(["supervise", "keeper", "--interval", "1", "--max-restarts", "2", "--json"])
    // Synced: the VM is killed, not halted, and the marker must be on the disk the next boot reads.
    await ok(["exec", "keeper", "--", "sh", "-c", "touch /root/sick; sync"])
    const report = await supervised
    assert.strictEqual(report.code, 0, report.stderr)
    assert.deepInclude(json(report), { workspace: "keeper", restarts: 2, state: "failed" })
    assert.include(json(report).reason, "--max-restarts")
    const failed = await record("keeper")
    assert.strictEqual(failed.state, "failed")
    assert.match(
      failed.failure,
      /^health check failed 2 times in a row: sh -c test ! -e \/root\/sick: exit 1/
    )
    const events = json(await ok(["events", "keeper", "--json"])).events as Array<
      { type: string; detail: string }
    >
    assert.strictEqual(events.filter((e) => e.type === "crashed" && e.detail === failed.failure).length, 3)
    assert.deepStrictEqual(
      events.filter((e) => e.type === "supervise").map((e) => e.detail.replace(/ \(.*\)$/, "")),
      ["restart 1 from failed", "restart 2 from failed"]
    )
    assert.include(report.stderr, "supervise keeper: restart 2 from failed (health check failed")
  })

  it("under never, supervise starts the workspace once and does not restart it", async () => {
    const spec = NodePath.join(scratch, "once.yaml")
    NodeFs.writeFileSync(
      spec,
      [
        `image: ${defaultImage}`,
        "restart: never",
        "health:",
        "  exec: ['false']",
        "  intervalSeconds: 1",
        "  retries: 1"
      ]
        .join("\n") + "\n"
    )
    await ok(["create", "--file", spec, "once"])
    const report = json(await ok(["supervise", "once", "--interval", "1", "--json"]))
    assert.deepInclude(report, { workspace: "once", restarts: 0, state: "failed" })
    assert.include(report.reason, "restart policy is never")
    assert.deepStrictEqual(await eventsOf("once", "supervise"), ["started from prepared"])
  })

  it("an httpGet check probes the published port from the host; a page that turns 404 gets the VM killed", async () => {
    const hostPort = await new Promise<number>((resolve, reject) => {
      const server = NodeNet.createServer().listen(0, "127.0.0.1", () => {
        const { port } = server.address() as NodeNet.AddressInfo
        server.close(() => resolve(port))
      }).on("error", reject)
    })
    const spec = NodePath.join(scratch, "web.yaml")
    NodeFs.writeFileSync(
      spec,
      [
        `image: ${defaultImage}`,
        "restart: never",
        "service: mkdir -p /www && echo up > /www/healthz && exec httpd -f -p 8080 -h /www",
        "health:",
        "  httpGet: { path: /healthz, port: 8080 }",
        "  intervalSeconds: 1",
        "  timeoutSeconds: 5",
        "  retries: 2"
      ].join("\n") + "\n"
    )
    await ok(["create", "--file", spec, "-p", `127.0.0.1:${hostPort}:8080`, "web"])
    await ok(["start", "web"])
    // Healthy: the page answers on the host through the published port, and the workspace runs on.
    const page = await until("the page on the published port", async () => {
      const response = await fetch(`http://127.0.0.1:${hostPort}/healthz`).catch(() => undefined)
      return response?.status === 200 ? await response.text() : undefined
    })
    assert.strictEqual(page, "up\n")
    await sleep(3000)
    assert.strictEqual((await record("web")).state, "running")
    assert.deepStrictEqual(await eventsOf("web", "crashed"), [])

    await ok(["exec", "web", "--", "rm", "/www/healthz"])
    const failed = await until("the failing HTTP check to fail the workspace", async () => {
      const ws = await record("web")
      return ws.state === "failed" ? ws : undefined
    })
    assert.match(failed.failure, /^health check failed 2 times in a row: GET \/healthz .*404/)
    await until(
      "the VM to be gone",
      async () =>
        qemuProcessesMentioning(NodePath.join(stateDir, "workspaces", "web")).length === 0 ? true : undefined
    )
  })

  it("--install writes the systemd user unit and reports whether it could be enabled; --uninstall removes it", async () => {
    const config = NodePath.join(scratch, "config")
    const env = { XDG_CONFIG_HOME: config }
    const installed = json(await ok(["supervise", "--install", "keeper", "--json"], env))
    const path = NodePath.join(config, "systemd", "user", "microagent-supervise-keeper.service")
    assert.deepInclude(installed, { workspace: "keeper", unit: "microagent-supervise-keeper.service", path })
    const unit = NodeFs.readFileSync(path, "utf8")
    assert.match(
      unit,
      new RegExp(
        "^\\[Unit\\]\nDescription=microagent supervise keeper\nAfter=network-online.target\n\n\\[Service\\]\nType=simple\n"
          + `ExecStart=\\S+ \\S+microagent.mjs supervise keeper --state-dir ${stateDir}\n`
          + "Restart=on-failure\n\n\\[Install\\]\nWantedBy=default.target\n$"
      )
    )
    assert.strictEqual(NodeFs.statSync(path).mode & 0o777, 0o600)
    // Registration is attempted: without a user session (or with the unit outside systemd's own
    // directories, as here) it reports how to enable it by hand.
    assert.isBoolean(installed.enabled)
    if (!installed.enabled) {
      assert.strictEqual(
        installed.command,
        "systemctl --user daemon-reload && systemctl --user enable --now microagent-supervise-keeper.service"
      )
    }
    const removed = json(await ok(["supervise", "--uninstall", "keeper", "--json"], env))
    assert.deepInclude(removed, { installed: false, enabled: false })
    assert.isFalse(NodeFs.existsSync(path))
    const missing = await ma(["supervise", "--install", "nosuch"], env)
    assert.strictEqual(missing.code, 1)
  })
})

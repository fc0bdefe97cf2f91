/**
 * Three runners on this machine as one cluster, on real QEMU workspaces and a real PostgreSQL started
 * here: placement by capacity (a runner declared full gets nothing), exec, cp and logs by name from
 * another runner's host, an image pulled into every runner's store, snapshots, the egress log and quarantine by name, one winner when two clients create the same name, `kill -9` of a runner
 * (its workspaces read `lost`, a `restart: always` one comes up elsewhere, the dead runner's copy never
 * runs beside it, and the runner reconciles when it comes back), PostgreSQL restarted under load (down
 * long enough for the fence to stop the movable workspace, which runs again once the database is back), and
 * a runner silent past --forget-after with no workspace forgotten.
 */
import { Context, Effect, Layer } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import * as ClusterClient from "../../src/cluster/Client.ts"
import { Cluster } from "../../src/promise/Cluster.ts"
import { MicroagentClient } from "../../src/rpc/Client.ts"
import { connect } from "../mcp/mcpClient.ts"
import { cliAsync, cliProcess, type CliResult, stopRuntime } from "../support/cli.ts"
import { type RunnerProcess, startRunner as startRunner_ } from "../support/clusterRunner.ts"
import { busyboxConfig, busyboxLayers, hostArchitecture, writeOciLayout } from "../support/images.ts"
import { qemuProcessesMentioning } from "../support/kernel.ts"
import { type Postgres, startPostgres } from "../support/postgres.ts"
import { freePort } from "../support/registry.ts"

const lockExpirySeconds = 6
/** Every runner's `--forget-after`: the supervisor, on whichever runner holds it, forgets by it. */
const forgetAfterSeconds = 8

let scratch: string
let postgres: Postgres

const runners: Array<RunnerProcess> = []
const runner = (id: string) => runners.find((r) => r.id === id)!

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

const startRunner = (r: RunnerProcess) =>
  startRunner_(r, { url: postgres.url, lockExpirySeconds, env: { MICROAGENT_RUNTIME_IDLE_SECONDS: "30" } })

/** The CLI through the cluster, as a client on `from`'s host (its state directory). */
const ma = (args: ReadonlyArray<string>, from = "r1"): Promise<CliResult> =>
  cliAsync(["--json", ...args], {
    stateDir: runner(from).stateDir,
    env: { MICROAGENT_CLUSTER: postgres.url }
  })

const ok = async (args: ReadonlyArray<string>, from = "r1") => {
  const result = await ma(args, from)
  assert.strictEqual(result.code, 0, `${args.join(" ")}: exit ${result.code}; ${result.stderr}`)
  return result.stdout === "" ? undefined : JSON.parse(result.stdout)
}

/** The error kind of a failed command; a crash (no JSON error) shows as its stderr. */
const kindOf = (result: CliResult): string => {
  try {
    return JSON.parse(result.stderr.trim().split("\n").at(-1)!).error.kind
  } catch {
    return `crash (exit ${result.code}): ${result.stderr.slice(0, 2000)}`
  }
}

interface Listed {
  readonly name: string
  readonly state: string
  readonly host?: string
}

const list = async (): Promise<Array<Listed>> => (await ok(["list"])).workspaces

const until = async <A>(what: string, check: () => Promise<A | undefined>, seconds: number): Promise<A> => {
  const deadline = Date.now() + seconds * 1000
  while (Date.now() < deadline) {
    const value = await check()
    if (value !== undefined) return value
    await sleep(250)
  }
  throw new Error(`gave up waiting ${seconds} s for ${what}`)
}

beforeAll(async () => {
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-cluster-"))
  postgres = await startPostgres()
  for (const [id, capacity] of [["r1", ""], ["r2", ""], ["r3", "workspaces=0"]] as const) {
    runners.push({
      id,
      stateDir: NodePath.join(scratch, id),
      port: await freePort(),
      flags: [
        ...(capacity === "" ? [] : ["--capacity", capacity]),
        "--forget-after",
        String(forgetAfterSeconds)
      ],
      log: ""
    })
  }
  await Promise.all(runners.map(startRunner))
})

afterAll(async () => {
  for (const r of runners) r.process?.kill("SIGTERM")
  await sleep(500)
  for (const r of runners) {
    r.process?.kill("SIGKILL")
    const local = await cliAsync(["--json", "list", "--quiet"], { stateDir: r.stateDir })
    for (const name of local.stdout.split("\n").filter((line) => line !== "")) {
      await cliAsync(["delete", "--force", name], { stateDir: r.stateDir })
    }
    stopRuntime(r.stateDir)
  }
  stopRuntime(NodePath.join(scratch, "twin"))
  postgres?.stop()
  NodeFs.rmSync(scratch, { recursive: true, force: true })
})

describe("a cluster of three runners", () => {
  const hostOf = new Map<string, string>()
  /** A running workspace on each runner, other than w1 where there is one. */
  const started = new Map<string, string>()

  it("places six workspaces by capacity: the full runner gets none, the others share them", async () => {
    for (let i = 1; i <= 6; i++) {
      const workspace = await ok([
        "create",
        `w${i}`,
        "--profile",
        "tiny",
        ...(i === 1 ? ["--restart", "always"] : [])
      ])
      assert.strictEqual(workspace.name, `w${i}`)
      hostOf.set(`w${i}`, workspace.host)
    }
    const hosts = [...hostOf.values()]
    assert.notInclude(hosts, "r3", `the full runner got a workspace: ${hosts}`)
    assert.include(hosts, "r1", `${hosts}`)
    assert.include(hosts, "r2", `${hosts}`)
    const listed = await list()
    assert.deepStrictEqual(
      listed.map((w) => `${w.name}@${w.host}`).sort(),
      [...hostOf].map(([name, host]) => `${name}@${host}`).sort()
    )
    // Each runner's own store holds exactly its share.
    for (const r of runners) {
      const local = await cliAsync(["--json", "list", "--quiet"], { stateDir: r.stateDir })
      assert.deepStrictEqual(
        local.stdout.split("\n").filter((line) => line !== "").sort(),
        [...hostOf].filter(([, host]) => host === r.id).map(([name]) => name).sort()
      )
    }
    // A runner whose capacity is used up refuses, and the client says why.
    const refused = await ma(["create", "huge", "--memory", String(1024 * 1024)])
    assert.notStrictEqual(refused.code, 0)
    assert.match(refused.stderr, /no runner can take the workspace/)
    // A second runner under a live runner's id is refused (both would serve its shard group).
    const twin = await cliAsync(
      ["--json", "serve", "runner", "--advertise", `127.0.0.1:${await freePort()}`, "--runner-id", "r2"],
      { stateDir: NodePath.join(scratch, "twin"), env: { MICROAGENT_CLUSTER: postgres.url } }
    )
    assert.strictEqual(kindOf(twin), "conflict", twin.stderr)
    assert.include(twin.stderr, "runner id r2 is in use")
  })

  it("image pull through the cluster lands in every live runner's store, from the CLI, the Promise API and MCP", async () => {
    const layout = NodePath.join(scratch, "pulled-layout")
    const digest = writeOciLayout(layout, [{
      layers: busyboxLayers(),
      architecture: hostArchitecture,
      config: { ...busyboxConfig, Env: ["PULLED=through-the-cluster"] }
    }], "latest")
    const ref = `oci:${layout}`
    const storeOf = async (r: RunnerProcess) => {
      // The runner's own store, read on its host without --cluster.
      const local = await cliAsync(["--json", "image", "list"], { stateDir: r.stateDir })
      assert.strictEqual(local.code, 0, local.stderr)
      return (JSON.parse(local.stdout).images as Array<{ digest: string }>).map((image) => image.digest)
    }
    const everyRunner = runners.filter((r) => r.process?.exitCode === null)
    for (const r of everyRunner) {
      assert.notInclude(await storeOf(r), digest, `${r.id} holds it before the pull`)
    }

    const pulled = await ok(["image", "pull", ref], "r2")
    assert.strictEqual(pulled.digest, digest)
    // r3 takes no workspace, but placement may still weigh it and a later capacity change use it.
    for (const r of everyRunner) assert.include(await storeOf(r), digest, `${r.id} holds the pulled image`)

    // A reference no runner can resolve fails, naming a runner; nothing is recorded.
    const missing = await ma(["image", "pull", `oci:${NodePath.join(scratch, "no-such-layout")}`], "r1")
    assert.notStrictEqual(missing.code, 0)
    assert.match(JSON.parse(missing.stderr.trim().split("\n").at(-1)!).error.message, /^runner r[0-9]: /)

    const cluster = Cluster.connect(postgres.url)
    try {
      assert.strictEqual((await cluster.imagePull(ref)).digest, digest)
    } finally {
      await cluster.close()
    }
    const mcp = await connect(runner("r3").stateDir, { backend: "qemu", image: "" }, {
      env: { MICROAGENT_CLUSTER: postgres.url }
    })
    try {
      const viaMcp = await mcp.call("images.pull", { image: ref })
      assert.isTrue(viaMcp.ok, JSON.stringify(viaMcp))
      assert.strictEqual(viaMcp.result.digest, digest)
    } finally {
      await mcp.close()
    }
  })

  it("starts workspaces and reaches them by name from another runner's host: exec, cp, logs", async () => {
    const onR1 = [...hostOf].find(([name, host]) => host === "r1" && name !== "w1")?.[0]
      ?? [...hostOf].find(([, host]) => host === "r1")![0]
    const onR2 = [...hostOf].find(([name, host]) => host === "r2" && name !== "w1")?.[0]
      ?? [...hostOf].find(([, host]) => host === "r2")![0]
    started.set("r1", onR1)
    started.set("r2", onR2)
    await Promise.all(
      ["w1", onR1, onR2].filter((n, i, all) => all.indexOf(n) === i).map((name) => ok(["start", name]))
    )
    // A client on r2's host drives a workspace held by r1, and the other way round.
    for (const [name, from] of [[onR1, "r2"], [onR2, "r1"]] as const) {
      const exec = await ok(["exec", name, "--", "hostname"], from)
      assert.strictEqual(exec.result.stdout.trim(), name)
      const file = NodePath.join(scratch, `in-${name}.txt`)
      NodeFs.writeFileSync(file, `hello ${name}\n`)
      await ok(["cp", file, `${name}:/tmp/in.txt`], from)
      const cat = await ok(["exec", name, "--", "cat", "/tmp/in.txt"], from)
      assert.strictEqual(cat.result.stdout, `hello ${name}\n`)
      const out = NodePath.join(scratch, `out-${name}`)
      NodeFs.mkdirSync(out)
      await ok(["cp", `${name}:/tmp/in.txt`, out], from)
      assert.strictEqual(NodeFs.readFileSync(NodePath.join(out, "in.txt"), "utf8"), `hello ${name}\n`)
      const logs = await ok(["logs", name], from)
      assert.include(logs.logs, "microagent-agent: ready")
      // An interactive session, its input piped: the keystrokes follow the session to its runner.
      const session = await cliAsync(["connect", name], {
        stateDir: runner(from).stateDir,
        env: { MICROAGENT_CLUSTER: postgres.url },
        input: "hostname; exit 3\n"
      })
      assert.strictEqual(session.code, 3, session.stderr)
      assert.include(session.stdout, `${name}\n`)
    }
    const running = (await list()).filter((w) => w.state === "running").map((w) => w.name).sort()
    assert.includeMembers(running, ["w1", onR1, onR2])

    // The library: the cluster as a `MicroagentClient` layer, in this process.
    const viaLibrary = await Effect.runPromise(
      Effect.scoped(Effect.gen(function*() {
        const context = yield* Layer.build(ClusterClient.layer({ url: postgres.url }))
        const client = Context.get(context, MicroagentClient)
        const exec = yield* client.exec({ name: onR2, argv: ["hostname"] })
        const all = yield* client.list({})
        return { stdout: exec.stdout, hosts: all.map((w) => `${w.name}@${w.host}`) }
      }))
    )
    assert.strictEqual(viaLibrary.stdout.trim(), onR2)
    assert.include(viaLibrary.hosts, `${onR1}@r1`)

    // The Promise API.
    const cluster = Cluster.connect(postgres.url)
    try {
      const exec = await cluster.exec(onR1, ["hostname"])
      assert.strictEqual(exec.stdout.trim(), onR1)
      assert.include((await cluster.list()).map((w) => `${w.name}@${w.host}`), `${onR2}@r2`)
      const missing = await cluster.exec("no-such-workspace", ["true"]).then(
        () => undefined,
        (error) => error
      )
      assert.strictEqual(missing?.kind, "not_found")
    } finally {
      await cluster.close()
    }

    // MCP: `serve mcp` on r3's host, through the cluster.
    const mcp = await connect(runner("r3").stateDir, { backend: "qemu", image: "" }, {
      env: { MICROAGENT_CLUSTER: postgres.url }
    })
    try {
      const listed = await mcp.call("workspace.list")
      assert.isTrue(listed.ok, JSON.stringify(listed))
      assert.include(
        listed.result.workspaces.map((w: { name: string; host: string }) => `${w.name}@${w.host}`),
        `${onR1}@r1`
      )
      const exec = await mcp.call("workspace.exec", { name: onR1, argv: ["hostname"] })
      assert.isTrue(exec.ok, JSON.stringify(exec))
      assert.strictEqual(exec.result.stdout.trim(), onR1)
    } finally {
      await mcp.close()
    }
  })

  it("snapshots, copies and forks, the egress log and quarantine reach a workspace by name through the cluster", async () => {
    const created = await ok(["create", "s1", "--profile", "tiny", "--output", "note=/tmp/note.txt"])
    const home = runner(created.host)
    const from = created.host === "r1" ? "r2" : "r1"
    // A stopped workspace's disk, captured on its runner, listed and deleted from another host.
    const snapshot = await ok(["snapshot", "create", "--tag", "base", "s1"], from)
    assert.strictEqual(snapshot.kind, "disk")
    const snapshotDir = NodePath.join(home.stateDir, "workspaces", "s1", "snapshots", "base")
    assert.isTrue(NodeFs.existsSync(snapshotDir), `no snapshot at ${snapshotDir}`)
    assert.deepStrictEqual((await ok(["snapshot", "list", "s1"], from)).map((m: { tag: string }) => m.tag), [
      "base"
    ])
    // Copies are made by the runner that holds the source, and are reached by name from then on.
    const copied = await ok(["create", "c1", "--from-snapshot", "s1:base"], from)
    assert.strictEqual(copied.workspace.host, created.host)
    const cloned = await ok(["clone", "s1", "c2"], from)
    assert.strictEqual(cloned.workspace.host, created.host)
    const listed = await list()
    assert.deepStrictEqual(["c1", "c2"].map((n) => listed.find((w) => w.name === n)?.host), [
      created.host,
      created.host
    ])
    assert.isTrue(NodeFs.existsSync(NodePath.join(home.stateDir, "workspaces", "c2")))
    // A name the cluster already gives out is refused, and nothing is left of the attempt.
    assert.strictEqual(kindOf(await ma(["clone", "s1", "c1"], from)), "conflict")
    assert.strictEqual((await ok(["inspect", "c1"], from)).workspace.host, created.host)
    await ok(["delete", "--force", "c1"], from)
    await ok(["delete", "--force", "c2"], from)
    await ok(["snapshot", "delete", "s1", "base"], from)
    assert.isFalse(NodeFs.existsSync(snapshotDir))
    // Running: its egress log (the mediator's start) and quarantine, which refuses a start afterwards.
    await ok(["start", "s1"], from)
    const egress = await ok(["egress", "s1"], from)
    assert.strictEqual(egress.workspace, "s1")
    assert.isAbove(egress.records.length, 0, JSON.stringify(egress))
    const events = (await ok(["events", "s1"], from)).events.map((e: { type: string }) => e.type)
    assert.include(events, "snapshot", JSON.stringify(events))
    // Its declared outputs, listed and fetched from another host (the file travels back as a tar).
    await ok(["exec", "s1", "--", "sh", "-c", "echo noted > /tmp/note.txt"], from)
    const outputs = await ok(["artifacts", "ls", "s1"], from)
    assert.deepStrictEqual(outputs.artifacts.map((a: { name: string }) => a.name), ["note"])
    const fetched = NodePath.join(scratch, "fetched-note.txt")
    const got = await ok(["artifacts", "get", "s1", "note", fetched], from)
    assert.strictEqual(got.hostPath, fetched)
    assert.strictEqual(NodeFs.readFileSync(fetched, "utf8"), "noted\n")
    assert.strictEqual((await ok(["artifacts", "rm", "s1"], from)).removed, false)
    // A fork's children run beside their parent, and answer by name through the cluster.
    const forked = await ok(["fork", "s1", "--count", "1"], from)
    assert.deepStrictEqual(forked.children.map((c: Listed) => [c.name, c.host]), [[
      "s1-fork-1",
      created.host
    ]])
    assert.strictEqual(
      (await ok(["exec", "s1-fork-1", "--", "echo", "child"], from)).result.stdout,
      "child\n"
    )
    await ok(["delete", "--force", "s1-fork-1"], from)
    await ok(["quarantine", "--no-capture", "s1"], from)
    assert.strictEqual((await list()).find((w) => w.name === "s1")?.state, "quarantined")
    assert.strictEqual(kindOf(await ma(["start", "s1"], from)), "conflict")
    assert.strictEqual(qemuProcessesMentioning(NodePath.join(home.stateDir, "run", "s1")).length, 0)
    await ok(["delete", "--force", "s1"], from)
    assert.isUndefined((await list()).find((w) => w.name === "s1"))
  })

  it("Ctrl-C (or kill) of a CLI call through the cluster stops the guest's command on the runner", async () => {
    const name = started.get("r1")!
    for (const [signal, stream] of [["SIGINT", false], ["SIGTERM", false], ["SIGINT", true]] as const) {
      const marker = `sleep 4${signal === "SIGINT" ? 1 : 2}${stream ? 1 : 0}`
      // Asked from r2's host, so the call crosses the cluster to r1.
      const call = cliProcess([
        "exec",
        ...(stream ? ["--stream"] : []),
        name,
        "--",
        "sh",
        "-c",
        `${marker}; true`
      ], {
        stateDir: runner("r2").stateDir,
        env: { MICROAGENT_CLUSTER: postgres.url }
      })
      const running = async () => {
        const ps = await ok(["exec", name, "--", "ps"], "r2")
        return (ps.result.stdout as string).includes(marker)
      }
      await until(`${marker} to run in ${name}`, async () => ((await running()) ? true : undefined), 60)
      call.child.kill(signal)
      const ended = await call.result
      assert.strictEqual(ended.code, 130, `${signal}: ${ended.stderr}`)
      await until(`${marker} to stop after ${signal}`, async () => ((await running()) ? undefined : true), 10)
    }
  })

  it("two clients creating the same name at once: exactly one wins", async () => {
    const [a, b] = await Promise.all([
      ma(["create", "same", "--profile", "tiny"], "r1"),
      ma(["create", "same", "--profile", "tiny"], "r2")
    ])
    const codes = [a.code, b.code].sort()
    assert.deepStrictEqual(codes.map((code) => code === 0), [true, false], `${a.stderr}\n${b.stderr}`)
    assert.strictEqual(kindOf(a.code === 0 ? b : a), "conflict")
    const named = (await list()).filter((w) => w.name === "same")
    assert.strictEqual(named.length, 1)
    await ok(["delete", "same"])
    assert.notInclude((await list()).map((w) => w.name), "same")
  })

  it("kill -9 of a runner: its workspaces read lost, the restart: always one moves, nothing runs twice", async () => {
    const dead = runner(hostOf.get("w1")!)
    const other = dead.id === "r1" ? "r2" : "r1"
    const oldVm = NodePath.join(dead.stateDir, "run", "w1")
    assert.isAbove(qemuProcessesMentioning(oldVm).length, 0, "w1 is not running before the kill")
    // A call in flight on the runner when it dies fails (transient) once the runner is lost.
    const inFlightOn = started.get(dead.id)!
    const inFlight = inFlightOn === "w1" ? undefined : ma(["exec", inFlightOn, "--", "sleep", "300"], other)
    await sleep(1500)
    const killedAt = Date.now()
    dead.process!.kill("SIGKILL")
    // The fence kills the dead runner's movable VM at once, before anyone may move it.
    await until(
      "the fence to kill w1's VM",
      async () => (qemuProcessesMentioning(oldVm).length === 0 ? true : undefined),
      10
    )
    // Timed from when the `list` that saw them lost was asked (a CLI's start takes seconds on a loaded host).
    let askedAt = 0
    const lost = await until("the dead runner's workspaces to read lost", async () => {
      askedAt = Date.now()
      const listed = await list()
      const mine = listed.filter((w) => w.host === dead.id)
      return mine.length > 0 && mine.every((w) => w.state === "lost") ? mine : undefined
    }, lockExpirySeconds + 15)
    assert.isAtMost((askedAt - killedAt) / 1000, lockExpirySeconds + 10)
    if (inFlight !== undefined) {
      const cut = await inFlight
      assert.strictEqual(kindOf(cut), "transient", cut.stderr)
      assert.include(cut.stderr, `runner ${dead.id} was lost`)
      assert.isAtMost((Date.now() - killedAt) / 1000, lockExpirySeconds + 15)
    }
    assert.includeMembers(
      lost.map((w) => w.name),
      [...hostOf].filter(([name, host]) => host === dead.id && name !== "w1").map(([name]) => name)
    )
    // A call to a lost workspace says so at once, naming the runner.
    const lostName = lost.find((w) => w.name !== "w1")?.name
    if (lostName !== undefined) {
      const refused = await ma(["exec", lostName, "--", "true"], other)
      assert.strictEqual(kindOf(refused), "transient")
      assert.include(refused.stderr, dead.id)
    }
    // w1 comes up on the live runner that has room (r3 is full).
    await until("w1 to run on the other runner", async () => {
      const w1 = (await list()).find((w) => w.name === "w1")
      return w1?.host === other && w1.state === "running" ? true : undefined
    }, 120)
    const exec = await ok(["exec", "w1", "--", "hostname"], other)
    assert.strictEqual(exec.result.stdout.trim(), "w1")
    // The dead runner comes back: it removes its stale w1 and adopts the rest.
    await startRunner(dead)
    const local = await cliAsync(["--json", "list", "--quiet"], { stateDir: dead.stateDir })
    assert.notInclude(local.stdout.split("\n"), "w1")
    const listed = await until("the returned runner's workspaces to be back", async () => {
      const all = await list()
      return all.some((w) => w.host === dead.id && w.state === "lost") ? undefined : all
    }, 30)
    assert.strictEqual(listed.filter((w) => w.name === "w1").length, 1)
    assert.strictEqual(qemuProcessesMentioning(oldVm).length, 0, "the stale w1 runs again")
    assert.strictEqual(qemuProcessesMentioning(NodePath.join(runner(other).stateDir, "run", "w1")).length, 1)
  })

  it("PostgreSQL restarted under load: calls fail transient, then succeed; the fenced workspace runs again; no record is lost", async () => {
    const listed = await list()
    // w1 (restart: always) may move if the runner reads lost by the time the database is back.
    const before = listed.filter((w) => w.name !== "w1").map((w) => `${w.name}@${w.host}`).sort()
    const w1Host = listed.find((w) => w.name === "w1")!.host!
    assert.strictEqual(listed.find((w) => w.name === "w1")!.state, "running")
    const target = listed.find((w) => w.state === "running" && w.name !== "w1")!.name
    const outcomes: Array<string> = []
    let stop = false
    const load = (async () => {
      while (!stop) {
        const result = await ma(["exec", target, "--", "true"])
        outcomes.push(result.code === 0 ? "ok" : kindOf(result))
        await sleep(100)
      }
    })()
    await sleep(1500)
    // Down for longer than half the lock expiry: w1's runner stops it (the fence from the inside).
    await postgres.restart(lockExpirySeconds * 1000 * 0.8)
    let last: CliResult | undefined
    await until("a call to succeed after the restart", async () => {
      last = await ma(["exec", target, "--", "true"])
      return last.code === 0 ? true : undefined
    }, 60).catch((error: Error) => {
      // What the last call said and what each runner logged since its start: the diagnosis of a slow recovery.
      const logs = runners.map((r) => `--- ${r.id}:\n${r.log.slice(-3000)}`).join("\n")
      throw new Error(`${error.message}; the last call: ${last?.stderr.slice(-1500)}\n${logs}`)
    })
    stop = true
    await load
    assert.isTrue(
      outcomes.every((outcome) => outcome === "ok" || outcome === "transient"),
      outcomes.join(",")
    )
    assert.include(runner(w1Host).log, "no heartbeat for half the lock expiry")
    const w1 = await until("w1 to run again", async () => {
      const found = (await list()).find((w) => w.name === "w1")
      return found?.state === "running" ? found : undefined
    }, 120)
    const exec = await ok(["exec", "w1", "--", "hostname"])
    assert.strictEqual(exec.result.stdout.trim(), "w1")
    const copies = runners.flatMap((r) => qemuProcessesMentioning(NodePath.join(r.stateDir, "run", "w1")))
    assert.strictEqual(copies.length, 1, `w1 runs ${copies.length} times (now on ${w1.host})`)
    const after = (await list()).filter((w) => w.name !== "w1").map((w) => `${w.name}@${w.host}`).sort()
    assert.deepStrictEqual(after, before)
  })

  it("forgets a runner silent past --forget-after that holds no workspace; the others stay", async () => {
    const ids = () => [...postgres.query("SELECT id FROM microagent_runners ORDER BY id")]
    const r4: RunnerProcess = {
      id: "r4",
      stateDir: NodePath.join(scratch, "r4"),
      port: await freePort(),
      flags: ["--capacity", "workspaces=0", "--forget-after", String(forgetAfterSeconds)],
      log: ""
    }
    runners.push(r4)
    await startRunner(r4)
    assert.include(ids(), "r4")
    r4.process!.kill("SIGKILL")
    const killedAt = Date.now()
    await until(
      "r4 to be forgotten",
      async () => (ids().includes("r4") ? undefined : true),
      forgetAfterSeconds + 20
    )
    assert.isAtLeast(
      (Date.now() - killedAt) / 1000,
      forgetAfterSeconds - 1,
      "forgotten before --forget-after"
    )
    // Live runners, the full r3 with no workspace among them, and the ones holding workspaces stay.
    assert.includeMembers(ids(), ["r1", "r2", "r3"])
    // A forgotten runner that comes back registers again.
    await startRunner(r4)
    assert.include(ids(), "r4")
  })
})

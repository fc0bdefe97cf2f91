/**
 * Losing state.db and getting it back, through the CLI as a user does it (fake backend; the image store
 * is the real one, fed a small local OCI layout): a damaged page, a truncated file and a deleted one each
 * give an error that names the file and `microagent state restore`; the restore brings back every
 * workspace, volume, network and image record, re-registers what was made after the last backup from
 * the disk, and the workspaces run again.
 */
import Sqlite from "better-sqlite3"
import { Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterEach, assert, beforeEach, describe, it } from "vitest"
import { cliAsync, type CliResult, errorOf, stopRuntime } from "../support/cli.ts"
import { killFakeVmms } from "../support/fakeEnvironment.ts"
import { hostArchitecture, writeOciLayout } from "../support/images.ts"

let stateDir: string
const env = { MICROAGENT_BACKEND: "fake", MICROAGENT_OUTPUT: "json" }
const run = (args: ReadonlyArray<string>) => cliAsync(args, { stateDir, env })
const ok = (result: CliResult, what: string) => {
  assert.strictEqual(result.code, 0, `${what}: ${result.stderr}`)
  return result.stdout.trim() === "" ? undefined : JSON.parse(result.stdout)
}

/** Waits for the runtime (if any) to exit, so that nothing holds state.db open. */
const runtimeGone = async () => {
  stopRuntime(stateDir)
  const pidFile = NodePath.join(stateDir, "run", "runtime.pid")
  for (let i = 0; i < 200 && NodeFs.existsSync(pidFile); i++) await new Promise((r) => setTimeout(r, 50))
}

beforeEach(() => {
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-state-cli-"))
})
afterEach(async () => {
  stopRuntime(stateDir)
  await Effect.runPromise(killFakeVmms(stateDir))
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

const database = () => NodePath.join(stateDir, "state.db")

/** Records of every kind, a backup, then a workspace and a volume the backup does not have. */
const populate = async () => {
  const layout = NodePath.join(stateDir, "..", `${NodePath.basename(stateDir)}-layout`)
  writeOciLayout(layout, [{
    layers: [[{ path: "etc/", type: "dir" }, { path: "etc/hello", content: "hello\n" }]],
    architecture: hostArchitecture,
    config: { Cmd: ["/bin/sh"] }
  }])
  ok(await run(["image", "import", "--tag", "local/recover:1", layout]), "image import")
  NodeFs.rmSync(layout, { recursive: true, force: true })
  ok(await run(["create", "--image", "alpine", "early"]), "create early")
  ok(await run(["volume", "create", "--size-mib", "16", "vol1"]), "volume create")
  ok(await run(["network", "create", "net1"]), "network create")
  const backup = ok(await run(["state", "backup"]), "state backup")
  assert.strictEqual(NodeFs.statSync(backup.path).mode & 0o777, 0o600)
  ok(await run(["create", "--image", "alpine", "late"]), "create late")
  ok(await run(["volume", "create", "--size-mib", "16", "vol2"]), "volume create vol2")
  await runtimeGone()
}

/** The error every command gives, `doctor` and `state check` included. */
const assertLeadsToRestore = async (problem: string) => {
  const listed = await run(["list"])
  assert.strictEqual(listed.code, 1, listed.stderr)
  const error = errorOf(listed).error
  assert.strictEqual(error.kind, "permanent")
  assert.include(error.message, `state database ${database()} ${problem}`)
  assert.notInclude(error.message, "Failed to execute statement")
  assert.include(error.remediation, "microagent state restore")
  const doctor = await run(["doctor"])
  const state = JSON.parse(doctor.stdout).checks.find((c: { name: string }) => c.name === "state")
  assert.isFalse(state.ok)
  assert.isTrue(state.required)
  assert.include(state.remediation, "microagent state restore")
  assert.strictEqual(doctor.code, 1)
  const check = await run(["state", "check"])
  assert.strictEqual(check.code, 1)
  assert.isFalse(JSON.parse(check.stdout).ok)
}

/** Restores, and checks that everything is back and runs. */
const restoreAndVerify = async () => {
  const report = ok(await run(["state", "restore"]), "state restore")
  assert.match(report.restoredFrom, /backups\/state-.*-manual\.db$/)
  assert.deepStrictEqual(report.disk.reregistered, ["late"])
  assert.deepStrictEqual(report.disk.volumes, ["vol2"])
  for (const aside of report.setAside) assert.isTrue(NodeFs.existsSync(aside), `${aside} kept`)
  assert.isTrue(ok(await run(["state", "check"]), "state check").ok)

  const names = ok(await run(["list"]), "list").workspaces.map((w: { name: string }) => w.name)
  assert.deepStrictEqual(names, ["early", "late"])
  const volumes = ok(await run(["volume", "ls"]), "volume ls").volumes.map((v: { name: string }) => v.name)
  assert.deepStrictEqual(volumes, ["vol1", "vol2"])
  const networks = ok(await run(["network", "ls"]), "network ls").networks.map((n: { name: string }) =>
    n.name
  )
  assert.deepStrictEqual(networks, ["net1"])
  const images = ok(await run(["image", "list"]), "image list").images.map((i: { ref: string }) => i.ref)
  assert.isTrue(images.some((ref: string) => ref.includes("local/recover:1")), JSON.stringify(images))
  const events = ok(await run(["events", "late"]), "events")
  assert.include(JSON.stringify(events), "re-registered from its manifest")

  for (const name of ["early", "late"]) {
    ok(await run(["start", name]), `start ${name}`)
    const out = await cliAsync(["exec", name, "--", "echo", `hi from ${name}`], {
      stateDir,
      env: { ...env, MICROAGENT_OUTPUT: "text" }
    })
    assert.strictEqual(out.stdout, `hi from ${name}\n`, out.stderr)
    ok(await run(["kill", name]), `kill ${name}`)
  }
}

describe("state.db lost and restored (CLI, fake backend)", () => {
  it("a damaged page in the middle, then a truncated file, then a deleted one", async () => {
    await populate()

    const db = new Sqlite(database())
    const pages = Number(db.pragma("page_count", { simple: true }))
    const used = new Set(db.prepare("SELECT pageno FROM dbstat").pluck().all() as Array<number>)
    db.close()
    let page = Math.ceil(pages / 2)
    while (!used.has(page)) page++
    const fd = NodeFs.openSync(database(), "r+")
    NodeFs.writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, (page - 1) * 4096)
    NodeFs.closeSync(fd)
    await assertLeadsToRestore("is damaged")
    await restoreAndVerify()
    await runtimeGone()

    NodeFs.truncateSync(database(), Math.floor(NodeFs.statSync(database()).size / 2))
    await assertLeadsToRestore("is damaged")
    await restoreAndVerify()
    await runtimeGone()

    for (const suffix of ["", "-wal", "-shm"]) NodeFs.rmSync(`${database()}${suffix}`, { force: true })
    await assertLeadsToRestore("is missing")
    await restoreAndVerify()
  }, 300_000)

  it("state check and doctor read a state directory without creating anything", async () => {
    const fresh = NodePath.join(stateDir, "not-yet")
    const check = await cliAsync(["state", "check"], { stateDir: fresh, env })
    assert.strictEqual(check.code, 0, check.stderr)
    assert.deepStrictEqual(JSON.parse(check.stdout).exists, false)
    const doctor = await cliAsync(["doctor"], { stateDir: fresh, env })
    assert.isTrue(JSON.parse(doctor.stdout).checks.find((c: { name: string }) => c.name === "state").ok)
    assert.isFalse(NodeFs.existsSync(fresh))
  }, 120_000)

  it("restore stops a runtime that serves the directory; its running workspace is re-adopted", async () => {
    ok(await run(["create", "--image", "alpine", "busy"]), "create")
    ok(await run(["state", "backup"]), "backup")
    ok(await run(["start", "busy"]), "start")
    const pid = Number(
      NodeFs.readFileSync(NodePath.join(stateDir, "run", "runtime.pid"), "utf8").split(" ")[0]
    )
    const report = ok(await run(["state", "restore"]), "state restore")
    assert.strictEqual(report.stoppedRuntime, pid)
    // The backup says prepared; the manifest (newer) says running, and the VMM is alive: it stays running.
    assert.deepStrictEqual(report.disk.refreshed, ["busy"])
    assert.deepStrictEqual(report.vms, [{ workspace: "busy", from: "running", to: "running" }])
    const out = await cliAsync(["exec", "busy", "--", "echo", "still here"], {
      stateDir,
      env: { ...env, MICROAGENT_OUTPUT: "text" }
    })
    assert.strictEqual(out.stdout, "still here\n", out.stderr)
    ok(await run(["kill", "busy"]), "kill")
  }, 180_000)
})

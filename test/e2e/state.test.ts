/**
 * state.db damaged under a running microVM, and restored: the error leads to `state restore`, the
 * running VM is re-adopted (its disk and processes untouched), and a workspace created after the last
 * backup comes back from its manifest and boots. Real QEMU, the built-in busybox image.
 */
import Sqlite from "better-sqlite3"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { defaultImage } from "../../src/layers/image/BuiltinImages.ts"
import { cliAsync, type CliResult, errorOf, stopRuntime } from "../support/cli.ts"
import { qemuProcessesMentioning } from "../support/kernel.ts"
import { requireTool } from "../support/registry.ts"

let stateDir: string

const ma = (args: ReadonlyArray<string>): Promise<CliResult> =>
  cliAsync(args, { stateDir, env: { MICROAGENT_BACKEND: "qemu", MICROAGENT_OUTPUT: "json" } })

const ok = async (args: ReadonlyArray<string>) => {
  const result = await ma(args)
  assert.strictEqual(result.code, 0, `${args.join(" ")}: ${result.stderr}`)
  return result.stdout.trim() === "" ? undefined : JSON.parse(result.stdout)
}

const runtimeGone = async () => {
  stopRuntime(stateDir)
  const pidFile = NodePath.join(stateDir, "run", "runtime.pid")
  for (let i = 0; i < 400 && NodeFs.existsSync(pidFile); i++) await new Promise((r) => setTimeout(r, 50))
}

beforeAll(() => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("mke2fs", "e2fsprogs")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-e2e-state-"))
})

afterAll(async () => {
  await cliAsync(["delete", "--force", "early", "late"], { stateDir })
  stopRuntime(stateDir)
  for (const pid of qemuProcessesMentioning(stateDir)) process.kill(pid, "SIGKILL")
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("state.db restored on real microVMs", () => {
  it("re-adopts a running VM and boots a workspace recovered from its manifest", async () => {
    await ok(["create", "--image", defaultImage, "early"])
    await ok(["start", "early"])
    await ok(["exec", "early", "--", "sh", "-c", "echo on-disk > /root/marker; sync"])
    await ok(["state", "backup"])
    await ok(["create", "--image", defaultImage, "late"])
    const vmms = qemuProcessesMentioning(stateDir)
    assert.strictEqual(vmms.length, 1)

    // The runtime goes (the VM keeps running), then a page in the middle of state.db is overwritten.
    await runtimeGone()
    const database = NodePath.join(stateDir, "state.db")
    const db = new Sqlite(database)
    db.pragma("wal_checkpoint(TRUNCATE)")
    const pages = Number(db.pragma("page_count", { simple: true }))
    const used = new Set(db.prepare("SELECT pageno FROM dbstat").pluck().all() as Array<number>)
    db.close()
    let page = Math.ceil(pages / 2)
    while (!used.has(page)) page++
    const fd = NodeFs.openSync(database, "r+")
    NodeFs.writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, (page - 1) * 4096)
    NodeFs.closeSync(fd)

    const listed = await ma(["list"])
    assert.strictEqual(listed.code, 1)
    const error = errorOf(listed).error
    assert.include(error.message, `state database ${database} is damaged`)
    assert.include(error.remediation, "microagent state restore")

    const report = await ok(["state", "restore"])
    assert.deepStrictEqual(report.disk.reregistered, ["late"])
    assert.deepStrictEqual(report.vms, [{ workspace: "early", from: "running", to: "running" }])
    assert.deepStrictEqual(qemuProcessesMentioning(stateDir), vmms, "the VM was neither killed nor restarted")

    // A new runtime re-adopts the running VM: same disk, same guest.
    const marker = await ok(["exec", "early", "--", "cat", "/root/marker"])
    assert.strictEqual(marker.result.stdout, "on-disk\n")
    // The workspace made after the backup boots from its disk.
    await ok(["start", "late"])
    const hello = await ok(["exec", "late", "--", "echo", "hello after restore"])
    assert.strictEqual(hello.result.stdout, "hello after restore\n")
    assert.isTrue((await ok(["state", "check"])).ok)
  }, 900_000)
})

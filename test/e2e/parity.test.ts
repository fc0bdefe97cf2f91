/**
 * The original's CLI verbs on one real QEMU microVM, driven through the CLI: `start --wait`, `stats`
 * (once and followed), `connect --send`, `resize` of the root disk (refused while running; the guest's
 * `df` sees the new size after the next start), and a `--ttl` lease that `gc` reaps.
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { defaultImage } from "../../src/layers/image/BuiltinImages.ts"
import { binPath, cliAsync, type CliResult, errorOf, stopRuntime } from "../support/cli.ts"
import { qemuProcessesMentioning, requireTool } from "../support/kernel.ts"

let stateDir: string

const env = () => ({ ...process.env, MICROAGENT_HOME: stateDir, MICROAGENT_BACKEND: "qemu", NO_COLOR: "1" })
const ma = (args: ReadonlyArray<string>): Promise<CliResult> =>
  cliAsync(args, { stateDir, env: { MICROAGENT_BACKEND: "qemu" } })

const ok = async (args: ReadonlyArray<string>) => {
  const result = await ma(args)
  assert.strictEqual(result.code, 0, `${args.join(" ")}: ${result.stderr}`)
  return result
}

/** The JSON documents a command printed, one per line. */
const docs = (result: CliResult) => result.stdout.trim().split("\n").map((line) => JSON.parse(line))

/** Total KiB of / as the entrypoint's `df -k /` printed it. */
const rootKiB = async () => {
  const result = docs(await ok(["result", "--json", "par"]))[0]
  const fields = (result.stdout as string).trim().split(/\s+/)
  return Number(fields[1])
}

beforeAll(() => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("resize2fs", "e2fsprogs")
  requireTool("dumpe2fs", "e2fsprogs")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-e2e-parity-"))
})

afterAll(() => {
  stopRuntime(stateDir)
  for (const pid of qemuProcessesMentioning(stateDir)) process.kill(pid, "SIGKILL")
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("the original's verbs on a real microVM", () => {
  it("start --wait, stats, connect --send, resize, and a lease reaped by gc", async () => {
    await ok([
      "create",
      "--json",
      "--image",
      defaultImage,
      "--ttl",
      "1h",
      "--entrypoint",
      "df -k / | tail -1",
      "par"
    ])
    const inspected = docs(await ok(["inspect", "--json", "par"]))[0]
    assert.isString(inspected.workspace.expiresAt, "the lease is recorded")

    // start --wait: the started workspace, then the wait result once the entrypoint has run.
    const [started, waited] = docs(await ok(["start", "--wait", "--wait-timeout", "5m", "--json", "par"]))
    assert.strictEqual(started.state, "running")
    assert.deepInclude(waited, { workspace: "par", ok: true, entrypoint: "exited", exitCode: 0 })
    const before = await rootKiB()
    assert.isAbove(before, 0)

    const [sample] = docs(await ok(["stats", "--json", "--interval", "200ms", "par"]))
    assert.strictEqual(sample.pid, started.vm.pid)
    assert.isAbove(sample.memoryBytes, 16 * 1024 * 1024, "a booted guest's memory is resident in its VMM")
    assert.isAbove(sample.cpuSeconds, 0)
    assert.isAbove(sample.disk.allocatedBytes, 0)
    assert.isAtLeast(sample.disk.apparentBytes, sample.disk.allocatedBytes)

    const sending = await ma(["connect", "--send", "echo sent-$((40+2)); exit 3", "--timeout", "60s", "par"])
    assert.strictEqual(sending.code, 3, sending.stderr)
    assert.include(sending.stdout, "sent-42")

    const running = await ma(["resize", "--json", "--size-mib", "1024", "par"])
    assert.strictEqual(running.code, 1)
    assert.strictEqual(errorOf(running).error.kind, "conflict")

    // stats -f follows until the workspace stops.
    const follow = NodeChild.spawn(process.execPath, [
      binPath,
      "stats",
      "-f",
      "--json",
      "--interval",
      "300ms",
      "par"
    ], {
      env: env(),
      stdio: ["ignore", "pipe", "pipe"]
    })
    let followed = ""
    follow.stdout.on("data", (chunk: Buffer) => (followed += chunk.toString()))
    const followEnd = new Promise<number | null>((resolve) => follow.once("exit", resolve))
    await new Promise((resolve) => setTimeout(resolve, 3000))
    await ok(["halt", "par"])
    assert.strictEqual(await followEnd, 0)
    const samples = followed.trim().split("\n").map((line) => JSON.parse(line))
    assert.isAtLeast(samples.length, 1)
    assert.isTrue(samples.every((s: { workspace: string }) => s.workspace === "par"))

    const fromMiB = Math.round(
      NodeFs.statSync(NodePath.join(stateDir, "workspaces", "par", "rootfs")).size / 2 ** 20
    )
    const toMiB = fromMiB + 256
    const [resized] = docs(await ok(["resize", "--json", "--size-mib", String(toMiB), "par"]))
    assert.deepInclude(resized, { workspace: "par", from_size_mib: fromMiB, to_size_mib: toMiB })
    assert.isAbove(resized.usage.sizeMiB, toMiB - 1)
    assert.isAbove(resized.usage.fsFreeMiB, 256)

    // The next start (with a lease that runs out during its boot) sees the larger disk.
    const [, again] = docs(
      await ok(["start", "--wait", "--wait-timeout", "5m", "--ttl", "1s", "--json", "par"])
    )
    assert.strictEqual(again.ok, true)
    const after = await rootKiB()
    assert.isAbove(after - before, 200 * 1024, `df: ${before} KiB before, ${after} KiB after`)

    const [gc] = docs(await ok(["gc", "--json"]))
    assert.deepStrictEqual(gc.expired, [{ workspace: "par", action: "halted" }])
    assert.strictEqual(docs(await ok(["inspect", "--json", "par"]))[0].workspace.state, "halted")
    assert.isTrue(
      NodeFs.existsSync(NodePath.join(stateDir, "workspaces", "par", "rootfs")),
      "gc keeps the disk"
    )
    const refused = await ma(["start", "--json", "par"])
    assert.strictEqual(refused.code, 1)
    assert.strictEqual(errorOf(refused).error.kind, "conflict")
    assert.include(errorOf(refused).error.remediation, "--ttl")
    await ok(["delete", "par"])
  }, 600_000)
})

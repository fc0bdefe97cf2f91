/**
 * Secrets on real QEMU microVMs, driven through the CLI: resolved in the CLI's own process, delivered
 * to a tmpfs in the guest as 0400 files, and found nowhere on the host's disk afterwards; a secret that
 * cannot be resolved fails before anything boots.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { defaultImage } from "../../src/layers/image/BuiltinImages.ts"
import { cliAsync, type CliResult, errorOf, stopRuntime } from "../support/cli.ts"
import { qemuProcessesMentioning, requireTool } from "../support/kernel.ts"

let stateDir: string
let scratch: string

/** Values no other part of the test or the system would ever write. */
const envValue = `env-secret-${process.pid}-c0ffee`
const fileValue = `file-secret-${process.pid}-decaf`
const dotenvValue = `dotenv-secret-${process.pid}-beef`

const ma = (args: ReadonlyArray<string>, env: Record<string, string> = {}): Promise<CliResult> =>
  cliAsync(args, {
    stateDir,
    // A long-lived runtime, started by a command without the variables: it never sees them.
    env: { MICROAGENT_BACKEND: "qemu", MICROAGENT_RUNTIME_IDLE_SECONDS: "120", ...env }
  })

const json = (result: CliResult) => {
  assert.strictEqual(result.stderr.includes("internal error"), false, result.stderr)
  assert.isAbove(result.stdout.length, 0, `no output; exit ${result.code}; stderr: ${result.stderr}`)
  return JSON.parse(result.stdout)
}

const ok = async (args: ReadonlyArray<string>, env: Record<string, string> = {}) => {
  const result = await ma(args, env)
  assert.strictEqual(result.code, 0, `${args.join(" ")}: ${result.stderr}`)
  return result
}

/** QEMU processes whose command line mentions this test's state directory. */
const qemuProcesses = (): Array<number> => qemuProcessesMentioning(stateDir)

const runtimePid = () =>
  Number(NodeFs.readFileSync(NodePath.join(stateDir, "run", "runtime.pid"), "utf8").split(" ")[0])

/** Every file under `dir`, whatever its kind of content (SQLite pages, WAL, logs). */
const filesUnder = (dir: string): Array<string> =>
  NodeFs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = NodePath.join(dir, entry.name)
    if (entry.isDirectory()) return filesUnder(path)
    return entry.isFile() ? [path] : []
  })

/** The files under the state directory that contain `needle`, as bytes. */
const filesContaining = (needle: string) =>
  filesUnder(stateDir).filter((path) => {
    try {
      return NodeFs.readFileSync(path).includes(Buffer.from(needle))
    } catch {
      return false
    }
  })

const leftovers = async () => ({
  workspaces: json(await ma(["list"])).workspaces.map((w: { name: string; state: string }) =>
    `${w.name}:${w.state}`
  ),
  run: NodeFs.readdirSync(NodePath.join(stateDir, "run")).filter((f) => !f.startsWith("runtime")),
  qemu: qemuProcesses().length
})

beforeAll(async () => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("mke2fs", "e2fsprogs")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-e2e-secrets-"))
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-e2e-secrets-scratch-"))
  NodeFs.writeFileSync(NodePath.join(scratch, "token"), fileValue)
  NodeFs.writeFileSync(NodePath.join(scratch, ".env"), `OTHER=x\nSERVICE_KEY="${dotenvValue}"\n`)
  // The runtime starts here, from a process whose environment lacks the secret variable.
  assert.strictEqual((await ma(["run", defaultImage, "--", "true"])).code, 0)
}, 600_000)

afterAll(() => {
  stopRuntime(stateDir)
  for (const pid of qemuProcesses()) process.kill(pid, "SIGKILL")
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
  NodeFs.rmSync(scratch, { recursive: true, force: true })
})

describe("secrets on real microVMs", () => {
  it("delivers env, file and dotenv secrets as 0400 files in a tmpfs, and leaves no value on the host's disk", async () => {
    const runtime = runtimePid()
    await ok([
      "create",
      "--image",
      defaultImage,
      "--secret",
      "TOKEN=env:MA_E2E_TOKEN",
      "--secret",
      `FROM_FILE=file:${NodePath.join(scratch, "token")}`,
      "--secret",
      `FROM_DOTENV=dotenv:${NodePath.join(scratch, ".env")}:SERVICE_KEY`,
      "keeper"
    ], { MA_E2E_TOKEN: envValue })
    await ok(["start", "keeper"], { MA_E2E_TOKEN: envValue })
    assert.strictEqual(runtimePid(), runtime, "the runtime that delivered them never had the variable")

    const read = json(
      await ok([
        "exec",
        "keeper",
        "--",
        "sh",
        "-c",
        "cat /run/secrets/TOKEN; echo; cat /run/secrets/FROM_FILE; echo; cat /run/secrets/FROM_DOTENV"
      ])
    )
    assert.strictEqual(read.result.stdout, `${envValue}\n${fileValue}\n${dotenvValue}`)
    const modes = json(
      await ok([
        "exec",
        "keeper",
        "--",
        "sh",
        "-c",
        "stat -c '%a %U %n' /run/secrets/*; grep ' /run/secrets ' /proc/mounts"
      ])
    )
    assert.strictEqual(
      modes.result.stdout.split("\n").filter((l: string) => l.startsWith("400")).sort().join("\n"),
      ["400 root /run/secrets/FROM_DOTENV", "400 root /run/secrets/FROM_FILE", "400 root /run/secrets/TOKEN"]
        .join("\n")
    )
    assert.match(modes.result.stdout, /^tmpfs \/run\/secrets tmpfs /m)

    // The record names the references, never the values.
    const inspected = await ok(["inspect", "keeper"])
    assert.deepStrictEqual(
      json(inspected).workspace.secrets.map((s: { name: string; source: string }) => s.name).sort(),
      ["FROM_DOTENV", "FROM_FILE", "TOKEN"]
    )
    const events = await ok(["events", "keeper"])
    const logs = await ok(["logs", "keeper"])
    for (const value of [envValue, fileValue, dotenvValue]) {
      assert.notInclude(inspected.stdout + events.stdout + logs.stdout, value)
      // The whole state directory: state.db and its WAL, the console log, the runtime's log.
      assert.deepStrictEqual(filesContaining(value), [], `${value} is on the host's disk`)
    }
    assert.isTrue(
      filesUnder(stateDir).some((path) => path.endsWith("console.log")),
      "the console log was searched"
    )
    // The search does read the database: the workspace's name and a reference's path are found there.
    assert.isTrue(filesContaining("FROM_DOTENV").some((path) => /state\.db(-wal)?$/.test(path)))

    // Halted, the secrets are gone with the VM's memory; the next start resolves them again.
    await ok(["halt", "keeper"])
    const rotated = `${envValue}-rotated`
    await ok(["start", "keeper"], { MA_E2E_TOKEN: rotated })
    const again = json(await ok(["exec", "keeper", "--", "cat", "/run/secrets/TOKEN"]))
    assert.strictEqual(again.result.stdout, rotated)
    assert.deepStrictEqual(filesContaining(rotated), [])
    await ok(["delete", "--force", "keeper"])
    assert.deepStrictEqual(filesContaining(envValue), [])
  })

  it("delivers before run's command runs", async () => {
    const out = json(
      await ok(
        ["run", "--secret", "TOKEN=env:MA_E2E_TOKEN", defaultImage, "--", "cat", "/run/secrets/TOKEN"],
        {
          MA_E2E_TOKEN: envValue
        }
      )
    )
    assert.strictEqual(out.result.stdout, envValue)
    assert.deepStrictEqual(filesContaining(envValue), [])
  })

  it("fails before boot on a secret it cannot resolve, and leaves nothing", async () => {
    const unreadable = [
      `A=file:${NodePath.join(scratch, "no-such-file")}`,
      `A=file:${scratch}`,
      `A=dotenv:${NodePath.join(scratch, ".env")}:MISSING_KEY`,
      "A=env:MA_E2E_UNSET",
      "A=vault:secret/data/x#y",
      "bad-name=env:MA_E2E_TOKEN"
    ]
    for (const secret of unreadable) {
      const failed = await ma(["run", "--secret", secret, defaultImage, "--", "true"], {
        MA_E2E_TOKEN: envValue
      })
      assert.strictEqual(failed.code, 2, `${secret}: ${failed.stderr}`)
      assert.strictEqual(errorOf(failed).error.kind, "permanent")
      assert.deepStrictEqual(await leftovers(), { workspaces: [], run: [], qemu: 0 }, secret)
    }
    const empty = NodePath.join(scratch, "empty")
    NodeFs.writeFileSync(empty, "")
    const emptied = await ma(["run", "--secret", `A=file:${empty}`, defaultImage, "--", "true"])
    assert.match(errorOf(emptied).error.message, /empty/)

    // create records nothing when a secret cannot be read.
    const created = await ma([
      "create",
      "--image",
      defaultImage,
      "--secret",
      `A=file:${NodePath.join(scratch, "nope")}`,
      "never"
    ])
    assert.strictEqual(created.code, 2)
    assert.match(errorOf(created).error.message, /cannot read/)
    assert.deepStrictEqual(await leftovers(), { workspaces: [], run: [], qemu: 0 })

    // A workspace whose variable is unset at start: refused before boot, and it stays prepared.
    await ok(["create", "--image", defaultImage, "--secret", "TOKEN=env:MA_E2E_TOKEN", "later"], {
      MA_E2E_TOKEN: envValue
    })
    const start = await ma(["start", "later"])
    assert.strictEqual(start.code, 2, start.stderr)
    assert.match(errorOf(start).error.message, /MA_E2E_TOKEN is not set/)
    assert.deepStrictEqual(await leftovers(), { workspaces: ["later:prepared"], run: [], qemu: 0 })
    await ok(["delete", "later"])
  })
})

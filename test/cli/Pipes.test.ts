/**
 * A reader that goes away (`microagent … | head -c 100`) ends the command quietly with 141, as a
 * process ended by SIGPIPE (what coreutils tools give), never with an `EPIPE` stack; and whatever the
 * command started is still torn down. Covers the full CLI, the first stage's fast path, streamed exec,
 * connect and followed events, on the fake backend.
 */
import { spawn } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { binPath, cliAsync, stopRuntime } from "../support/cli.ts"

let stateDir: string
let loneBin: string

const big = ["sh", "-c", "yes | head -c 2000000"]

/**
 * Runs the CLI with a reader that closes its end of stdout after the first bytes, as `| head -c 100`
 * does; `then` runs once it has. Resolves with the CLI's exit code and what it wrote on stderr.
 */
const intoHead = (
  args: ReadonlyArray<string>,
  env: Record<string, string> = {},
  bin = binPath,
  then: () => Promise<unknown> = async () => {}
) =>
  new Promise<{ code: number | string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [bin, ...args], {
      env: {
        ...process.env,
        MICROAGENT_HOME: stateDir,
        MICROAGENT_OUTPUT: "text",
        MICROAGENT_RUNTIME_IDLE_SECONDS: "30",
        ...env
      },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stderr = ""
    child.stderr.on("data", (d) => (stderr += d))
    child.stdout.once("data", () => {
      child.stdout.destroy()
      void then()
    })
    child.on("close", (code, signal) => resolve({ code: code ?? String(signal), stderr }))
  })

const workspaces = async () =>
  (JSON.parse((await cliAsync(["list", "--json"], { stateDir })).stdout) as {
    workspaces: Array<{ name: string }>
  })
    .workspaces.map((w) => w.name)

beforeAll(() => {
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-pipes-"))
  // The first stage alone cannot fall back to the full CLI: what it answers, the fast path answered.
  const loneDir = NodeFs.mkdtempSync(NodePath.join(stateDir, "lone-"))
  loneBin = NodePath.join(loneDir, "microagent.mjs")
  NodeFs.copyFileSync(binPath, loneBin)
})
afterAll(async () => {
  await cliAsync(["delete", "--force", ...(await workspaces())], { stateDir })
  stopRuntime(stateDir)
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("a closed stdout", () => {
  it("ends run quietly with 141 and leaves no workspace behind (full CLI, text and JSON)", async () => {
    for (const output of ["text", "json"]) {
      const ran = await intoHead(["run", "--backend", "fake", "alpine", "--", ...big], {
        MICROAGENT_NO_FAST_PATH: "1",
        MICROAGENT_OUTPUT: output
      })
      assert.strictEqual(ran.stderr, "", output)
      assert.strictEqual(ran.code, 141, output)
    }
    assert.deepStrictEqual(await workspaces(), [])
  }, 180_000)

  it("ends run and exec served by the fast path quietly with 141", async () => {
    // The runtime is up since the last test: the first stage alone serves these.
    const ran = await intoHead(["run", "--backend", "fake", "alpine", "--", ...big], {}, loneBin)
    assert.strictEqual(ran.stderr, "")
    assert.strictEqual(ran.code, 141)
    assert.deepStrictEqual(await workspaces(), [])
    assert.strictEqual(
      (await cliAsync(["create", "--backend", "fake", "--image", "alpine", "w1"], { stateDir })).code,
      0
    )
    assert.strictEqual((await cliAsync(["start", "w1"], { stateDir })).code, 0)
    const execd = await intoHead(["exec", "w1", "--", ...big], {}, loneBin)
    assert.deepStrictEqual(execd, { code: 141, stderr: "" })
  }, 180_000)

  it("ends streamed exec, connect and followed events quietly with 141", async () => {
    assert.deepStrictEqual(await intoHead(["exec", "--stream", "w1", "--", ...big]), {
      code: 141,
      stderr: ""
    })
    assert.deepStrictEqual(await intoHead(["exec", "--stream", "--json", "w1", "--", ...big]), {
      code: 141,
      stderr: ""
    })
    assert.deepStrictEqual(await intoHead(["connect", "w1", "--", ...big]), { code: 141, stderr: "" })
    // Following events writes again when the workspace changes: that write finds the reader gone.
    const followed = await intoHead(
      ["events", "--follow", "w1"],
      {},
      binPath,
      () => cliAsync(["halt", "w1"], { stateDir })
    )
    assert.deepStrictEqual(followed, { code: 141, stderr: "" })
  }, 180_000)
})

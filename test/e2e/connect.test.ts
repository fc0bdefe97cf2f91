/**
 * `microagent connect` on a real QEMU microVM, driven through a real pseudo-terminal: a shell in a
 * guest PTY, keystrokes in, output out, the guest shell's exit code passed through, resizes reflected,
 * the detach keys leaving the VM running with our terminal restored, and piped stdin without a PTY.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { binPath, cliAsync, stopRuntime } from "../support/cli.ts"
import { qemuProcessesMentioning, requireTool } from "../support/kernel.ts"
import { runInPty } from "../support/pty.ts"

let stateDir: string
const workspace = "console"

const env = () => ({
  MICROAGENT_HOME: stateDir,
  MICROAGENT_BACKEND: "qemu",
  MICROAGENT_OUTPUT: "",
  NO_COLOR: "1",
  MICROAGENT_RUNTIME_IDLE_SECONDS: "2"
})
const ma = (args: ReadonlyArray<string>, input?: string) =>
  cliAsync(args, { stateDir, env: { MICROAGENT_BACKEND: "qemu" }, ...(input === undefined ? {} : { input }) })
const connectArgv = (...args: Array<string>) => [process.execPath, binPath, "connect", ...args]

/** QEMU processes whose command line mentions this test's state directory. */
const qemuProcesses = (): Array<number> => qemuProcessesMentioning(stateDir)

/** The guest's processes running /bin/sh (the sessions' shells). */
const guestShells = async () => {
  const ps = await ma(["exec", "--json", workspace, "--", "ps", "-o", "pid,args"])
  assert.strictEqual(ps.code, 0, ps.stderr)
  return (JSON.parse(ps.stdout).result.stdout as string).split("\n").filter((line) =>
    /\s\/bin\/sh$/.test(line)
  )
}

beforeAll(async () => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("python3", "python3")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-connect-"))
  for (const args of [["create", workspace], ["start", workspace]]) {
    const result = await ma(args)
    assert.strictEqual(result.code, 0, `${args.join(" ")}: ${result.stderr}`)
  }
}, 600_000)

afterAll(async () => {
  await ma(["delete", "--force", workspace])
  stopRuntime(stateDir)
  for (const pid of qemuProcesses()) process.kill(pid, "SIGKILL")
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("connect on QEMU", () => {
  it("runs a shell in a guest PTY and passes its exit code through", async () => {
    const session = await runInPty(connectArgv(workspace), [
      { expect: "# " },
      { send: "tty; echo $((40+2)); exit 3\r" },
      { expect: "42" }
    ], { env: env() })
    assert.isUndefined(session.failed, session.output)
    assert.strictEqual(session.code, 3, session.output)
    assert.include(session.output, "/dev/pts/", "the shell's stdin is a terminal")
    // libuv's raw mode keeps ONLCR, so the guest's CRLF shows as CR CR LF.
    assert.match(session.output, /\n42\r+\n/)
    assert.deepStrictEqual(await guestShells(), [], "the session's shell is gone")
  })

  it("gives the guest our terminal size and follows resizes", async () => {
    const session = await runInPty(connectArgv(workspace), [
      { expect: "# " },
      { send: "stty size\r" },
      { expect: "24 80" },
      { resize: [30, 100] },
      { sleepMs: 500 },
      { send: "stty size\r" },
      { expect: "30 100" },
      { send: "exit\r" }
    ], { env: env() })
    assert.isUndefined(session.failed, session.output)
    assert.strictEqual(session.code, 0, session.output)
  })

  it("detaches on Ctrl-], restoring the terminal and leaving the VM running", async () => {
    // The terminal's settings before and after, printed by the same shell that ran connect.
    const session = await runInPty([
      "sh",
      "-c",
      `stty -g; "${process.execPath}" "${binPath}" connect ${workspace}; echo "rc=$?"; stty -g`
    ], [
      { expect: "# " },
      { send: "echo still-$((1+1))\r" },
      { expect: "still-2" },
      { send: "\u001d" },
      { expect: "rc=" }
    ], { env: env() })
    assert.isUndefined(session.failed, session.output)
    assert.include(session.output, "detached from console")
    assert.include(session.output, "rc=0")
    const settings = session.output.split(/\r?\n/).filter((line) => /^[0-9a-f]+(:[0-9a-f]+){10,}/.test(line))
    assert.strictEqual(settings.length, 2, session.output)
    assert.strictEqual(settings[0], settings[1], "the terminal's settings are restored")
    const inspect = await ma(["inspect", "--json", workspace])
    assert.strictEqual(JSON.parse(inspect.stdout).workspace.state, "running")
    // The session's shell is hung up when the session ends; give the guest a moment to reap it.
    let shells = await guestShells()
    for (let i = 0; i < 20 && shells.length > 0; i++) {
      await new Promise((resolve) => setTimeout(resolve, 250))
      shells = await guestShells()
    }
    assert.deepStrictEqual(shells, [], "detaching stopped the session's shell")
  })

  it("takes other detach keys and a command", async () => {
    const session = await runInPty(
      connectArgv("--detach-keys", "ctrl-p,ctrl-q", workspace, "--", "/bin/sh", "-c", "echo ready; cat"),
      [
        { expect: "ready" },
        // A lone Ctrl-P followed by something else is a keystroke for the guest.
        { send: "\u0010x typed\r" },
        { expect: "^Px typed" },
        { send: "\u0010\u0011" }
      ],
      { env: env() }
    )
    assert.isUndefined(session.failed, session.output)
    assert.strictEqual(session.code, 0, session.output)
    assert.include(session.output, "detached from console")
  })

  it("works with piped stdin, without a terminal", async () => {
    const piped = await ma(["connect", workspace], "tty || echo no-tty; echo piped; exit 4\n")
    assert.strictEqual(piped.code, 4, piped.stderr)
    assert.strictEqual(piped.stdout, "not a tty\nno-tty\npiped\n")
  })

  it("refuses what it cannot do with a classified error", async () => {
    const missing = await ma(["connect", "--json", "nope"])
    assert.strictEqual(missing.code, 2, "JSON output is refused")
    const absent = await ma(["connect", "nope"], "")
    assert.strictEqual(absent.code, 1)
    assert.include(absent.stderr, "not found")
  })
})

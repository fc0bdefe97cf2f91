/**
 * Containment on real QEMU microVMs behind egress mediation, through the CLI. `quarantine`: the custody
 * record holds the console, events, memory and disk; nothing of the VM (VMM, mediator, namespace) is
 * left; start is refused and only `delete --force` removes it. `dispatch`: the run's receipt counts
 * what the mediator refused, and nothing of the run is left.
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { defaultImage } from "../../src/layers/image/BuiltinImages.ts"
import { egressNamespace } from "../../src/layers/network/EgressLive.ts"
import { cliAsync, type CliResult, errorOf, stopRuntime } from "../support/cli.ts"
import { qemuProcessesMentioning, requireTool } from "../support/kernel.ts"

let stateDir: string

const ma = (args: ReadonlyArray<string>): Promise<CliResult> =>
  cliAsync(args, { stateDir, env: { MICROAGENT_BACKEND: "qemu", MICROAGENT_OUTPUT: "json" } })

const ok = async (args: ReadonlyArray<string>) => {
  const result = await ma(args)
  assert.strictEqual(result.code, 0, `${args.join(" ")}: ${result.stderr}`)
  return JSON.parse(result.stdout.trim().split("\n").at(-1)!)
}

const namespaces = () => NodeChild.execFileSync("ip", ["netns", "list"], { encoding: "utf8" })

beforeAll(() => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("ip", "iproute2")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-e2e-quarantine-"))
})

afterAll(() => {
  stopRuntime(stateDir)
  for (const pid of qemuProcessesMentioning(stateDir)) process.kill(pid, "SIGKILL")
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("quarantine on a real microVM", () => {
  it("cuts off, captures and stops the VM into custody; start is refused; delete needs --force", async () => {
    await ok(["create", "--image", defaultImage, "q"])
    await ok(["start", "q"])
    await ok(["exec", "q", "--", "sh", "-c", "echo evidence > /root/note; sync"])
    const netns = egressNamespace(stateDir, "q")
    assert.include(namespaces(), netns, "mediated: the workspace has its namespace")

    const result = await ok(["quarantine", "--reason", "suspicious egress", "q"])
    assert.deepInclude(result, {
      state: "quarantined",
      frozen: true,
      severed: true,
      captured: true,
      stopped: true
    })
    assert.deepStrictEqual(result.files, [
      "console.log",
      "disk.ext4",
      "egress.jsonl",
      "events.jsonl",
      "vm.state",
      "vm.state.mem"
    ])
    // The device state, and the memory of a 512 MiB guest as a raw file: what the guest touched is stored.
    assert.isAbove(NodeFs.statSync(NodePath.join(result.custody, "vm.state")).size, 0)
    const memory = NodeFs.statSync(NodePath.join(result.custody, "vm.state.mem"))
    assert.strictEqual(memory.size, 512 * 1024 * 1024)
    assert.isAbove(memory.blocks * 512, 16 * 1024 * 1024)
    const disk = NodePath.join(result.custody, "disk.ext4")
    const dumped = NodeChild.execFileSync("debugfs", ["-R", "cat /root/note", disk], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"]
    })
    assert.strictEqual(dumped, "evidence\n", "the disk copy holds what the guest wrote")
    assert.isAbove(
      NodeFs.statSync(NodePath.join(result.custody, "console.log")).size,
      0,
      "the console's output"
    )

    assert.deepStrictEqual(qemuProcessesMentioning(stateDir), [], "no VMM is left")
    assert.notInclude(namespaces(), netns, "nor its namespace")
    assert.strictEqual((await ok(["inspect", "q"])).workspace.state, "quarantined")

    const start = await ma(["start", "q"])
    assert.strictEqual(errorOf(start).error.kind, "conflict")
    const plain = await ma(["delete", "q"])
    assert.strictEqual(errorOf(plain).error.kind, "conflict")
    assert.isTrue(NodeFs.existsSync(result.custody))
    assert.deepInclude(await ok(["delete", "--force", "q"]), { deleted: true })
  })

  it("dispatch answers with the run's egress receipt, written by the mediator", async () => {
    const dispatched = await ok([
      "dispatch",
      "--",
      "sh",
      "-c",
      "nc -w 2 10.0.2.2 9 </dev/null; nc -w 2 169.254.169.254 80 </dev/null; nslookup example.com; echo done"
    ])
    assert.match(dispatched.workspace, /^dispatch-/)
    assert.strictEqual(dispatched.result.stdout.trim().split("\n").at(-1), "done")
    assert.strictEqual(dispatched.receipt.mode, "broker")
    assert.deepStrictEqual(dispatched.receipt.denyByHost, { "10.0.2.2:9": 1, "169.254.169.254:80": 1 })
    assert.strictEqual(dispatched.receipt.signals.denied, 2)
    assert.isAtLeast(dispatched.receipt.dnsAllowed, 1)
    assert.deepStrictEqual(dispatched.receipt.allowByHost, {})
    assert.deepStrictEqual((await ok(["list"])).workspaces, [], "the one-shot workspace is gone")
    assert.deepStrictEqual(qemuProcessesMentioning(stateDir), [])
  })
})

/**
 * Agent workspaces on real QEMU microVMs, through the CLI: the entrypoint each start runs and its
 * result (across starts, a failing one, one that cannot start, across a runtime restart), and the
 * `init` scaffold run end to end against a stand-in of the provider's API on one of the host's
 * addresses, reached through egress mediation; `create --dry-run` then reports the stored image's
 * digest and the kernel. The built-in busybox image; one workspace per concern, each booted as few
 * times as the case needs.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { defaultImage } from "../../src/layers/image/BuiltinImages.ts"
import { cliAsync, type CliResult, errorOf, stopRuntime } from "../support/cli.ts"
import { qemuProcessesMentioning } from "../support/kernel.ts"
import { standInReply, startProviderStandIn } from "../support/providerStandIn.ts"
import { requireTool } from "../support/registry.ts"

let stateDir: string
let scratch: string

const ma = (args: ReadonlyArray<string>): Promise<CliResult> =>
  cliAsync(args, { stateDir, env: { MICROAGENT_BACKEND: "qemu" } })

const json = (result: CliResult) => {
  assert.strictEqual(result.stderr.includes("internal error"), false, result.stderr)
  assert.isAbove(result.stdout.length, 0, `no output; exit ${result.code}; stderr: ${result.stderr}`)
  return JSON.parse(result.stdout)
}

const ok = async (args: ReadonlyArray<string>) => {
  const result = await ma(args)
  assert.strictEqual(result.code, 0, `${args.join(" ")}: exit ${result.code}; ${result.stderr}`)
  return result
}

beforeAll(() => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("mke2fs", "e2fsprogs")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-agent-"))
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-agent-scratch-"))
})

afterAll(() => {
  stopRuntime(stateDir)
  for (const pid of qemuProcessesMentioning(stateDir)) process.kill(pid, "SIGKILL")
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
  NodeFs.rmSync(scratch, { recursive: true, force: true })
})

describe("entrypoint and result on real microVMs", () => {
  it("each start runs the entrypoint; result and wait report it; it survives the runtime and the VM", async () => {
    // A counter on the workspace's disk tells the starts apart: exit 3 the first time, 4 the second.
    const entrypoint = "n=$(( $(cat /root/count 2>/dev/null || echo 0) + 1 )); echo $n > /root/count; sync; "
      + "echo start-$n; echo warn-$n >&2; sleep $n; exit $(( n + 2 ))"
    await ok(["create", "--image", defaultImage, "--entrypoint", entrypoint, "counter"])
    const before = await ma(["result", "counter"])
    assert.strictEqual(errorOf(before).error.kind, "not_found")

    await ok(["start", "counter"])
    // `wait` returns when the entrypoint ends (the VM keeps running); its exit code makes wait fail.
    const waited = await ma(["wait", "--timeout", "120", "counter"])
    assert.strictEqual(waited.code, 1, waited.stderr)
    assert.deepInclude(json(waited), { state: "running", entrypoint: "exited", exitCode: 3, ok: false })
    const first = await ma(["result", "counter", "--json"])
    assert.strictEqual(first.code, 1)
    const one = json(first)
    assert.deepInclude(one, { status: "exited", exitCode: 3, stdout: "start-1\n", stderr: "warn-1\n" })
    assert.isAtLeast(Date.parse(one.finishedAt) - Date.parse(one.startedAt), 1000)
    await ok(["halt", "counter"])

    // The second start replaces the result. The runtime that launched it goes away while it runs; the
    // next one finds the outcome in the guest.
    await ok(["start", "counter"])
    stopRuntime(stateDir)
    const second = json(await ma(["result", "--wait", "--timeout", "120", "counter"]))
    assert.deepInclude(second, { status: "exited", exitCode: 4, stdout: "start-2\n", stderr: "warn-2\n" })
    assert.notStrictEqual(second.sessionId, one.sessionId)
    await ok(["halt", "counter"])
    // Recorded: the result outlives the VM and a new runtime.
    stopRuntime(stateDir)
    assert.deepInclude(json(await ma(["result", "counter"])), { status: "exited", exitCode: 4 })
    const events = json(await ok(["events", "counter", "--json"])).events as Array<
      { type: string; detail: string }
    >
    assert.deepStrictEqual(
      events.filter((e) => e.type === "entrypoint" && e.detail.startsWith("exited")).map((e) => e.detail),
      ["exited 3", "exited 4"]
    )
  })

  it("a program that is not there is a start error, not an exit code", async () => {
    await ok(["create", "--image", defaultImage, "--entrypoint", "no-such-agent --serve", "missing"])
    await ok(["start", "missing"])
    const missing = await ma(["result", "--wait", "--timeout", "120", "missing"])
    assert.strictEqual(missing.code, 1)
    assert.deepInclude(json(missing), {
      status: "start_failed",
      exitCode: 127,
      startError: "no-such-agent: not found"
    })
    await ok(["kill", "missing"])
  })

  it("files land with their modes before the entrypoint reads them; bad targets are refused before boot", async () => {
    const dir = NodePath.join(scratch, "agent")
    NodeFs.mkdirSync(dir)
    NodeFs.writeFileSync(NodePath.join(dir, "input.json"), '{"task":"hello"}\n', { mode: 0o640 })
    NodeFs.writeFileSync(
      NodePath.join(dir, "agent.sh"),
      '#!/bin/sh\necho "agent read $(cat /work/input.json)"\n'
    )
    NodeFs.writeFileSync(NodePath.join(dir, "extra.txt"), "extra\n")
    const spec = NodePath.join(dir, "microagent.yaml")
    NodeFs.writeFileSync(
      spec,
      [
        "image: " + defaultImage,
        "entrypoint: /usr/local/bin/agent; stat -c '%a %n' /work/input.json /usr/local/bin/agent /etc/extra.txt",
        "files:",
        "  - { src: input.json, dst: /work/input.json }",
        '  - { src: agent.sh, dst: /usr/local/bin/agent, mode: "0755" }'
      ].join("\n") + "\n"
    )
    const relative = await ma([
      "create",
      "--file",
      spec,
      "--file-copy",
      `${dir}/extra.txt:etc/extra.txt`,
      "bad"
    ])
    assert.strictEqual(errorOf(relative).error.kind, "permanent")
    assert.include(errorOf(relative).error.message, "not an absolute guest path")
    const repeated = await ma([
      "create",
      "--file",
      spec,
      "--file-copy",
      `${dir}/extra.txt:/work/input.json`,
      "bad"
    ])
    assert.include(errorOf(repeated).error.message, "/work/input.json is given more than once")
    assert.strictEqual((await ma(["inspect", "bad"])).code, 1, "nothing was created")

    await ok(["create", "--file", spec, "--file-copy", `${dir}/extra.txt:/etc/extra.txt:0600`, "files"])
    await ok(["start", "files"])
    const delivered = json(await ok(["result", "--wait", "--timeout", "120", "files"]))
    assert.deepInclude(delivered, {
      status: "exited",
      exitCode: 0,
      stdout:
        'agent read {"task":"hello"}\n640 /work/input.json\n755 /usr/local/bin/agent\n600 /etc/extra.txt\n'
    })
    await ok(["kill", "files"])
  })

  it("setup runs once before the entrypoint; a failing step fails the start and the next start retries it", async () => {
    const gate = NodePath.join(scratch, "gate")
    NodeFs.writeFileSync(gate, "closed\n")
    await ok([
      "create",
      "--image",
      defaultImage,
      "--file-copy",
      `${gate}:/etc/gate`,
      "--setup",
      "echo ran >> /root/setup.log; sync",
      "--setup",
      "grep -q open /etc/gate || { echo gate closed; exit 4; }",
      "--entrypoint",
      "cat /root/setup.log",
      "setup"
    ])
    const refused = await ma(["start", "setup"])
    assert.strictEqual(refused.code, 1)
    assert.include(errorOf(refused).error.message, "setup 2/2 failed (exited 4)")
    assert.include(errorOf(refused).error.message, "gate closed")
    // The files are delivered again at the next start: the gate is open, setup runs again, then once only.
    NodeFs.writeFileSync(gate, "open\n")
    await ok(["start", "setup"])
    assert.deepInclude(json(await ok(["result", "--wait", "--timeout", "120", "setup"])), {
      stdout: "ran\nran\n"
    })
    await ok(["halt", "setup"])
    await ok(["start", "setup"])
    assert.deepInclude(json(await ok(["result", "--wait", "--timeout", "120", "setup"])), {
      stdout: "ran\nran\n"
    })
    const inspected = json(await ok(["inspect", "setup", "--json"]))
    assert.isString(inspected.workspace.setupDone)
    // The verification baseline of the successful setup: the disk's digest, read with the VM held
    // still, and the boot configuration, whose kernel is the one a plan names.
    const baseline = inspected.workspace.setupBaseline
    assert.strictEqual(baseline.recordedAt, inspected.workspace.setupDone)
    assert.match(baseline.rootfsSha256, /^[0-9a-f]{64}$/)
    assert.strictEqual(baseline.rootfsBytes, NodeFs.statSync(inspected.workspace.rootfsPath).size)
    const plan = json(await ok(["create", "--dry-run", "--json", "--image", defaultImage, "planned"]))
    assert.strictEqual(baseline.boot.kernelSha256, plan.kernel.sha256)
    assert.deepInclude(baseline.boot, { memoryMiB: 512, hostname: "setup", network: "user" })
    const baselineEvents = (json(await ok(["events", "setup", "--json"])).events as Array<
      { type: string; detail: string }
    >).filter((e) => e.type === "baseline")
    assert.lengthOf(baselineEvents, 1)
    assert.include(baselineEvents[0]!.detail, `rootfs sha256:${baseline.rootfsSha256.slice(0, 12)}`)
    await ok(["kill", "setup"])
  })

  it("init's scaffold runs end to end: create --file, cp the input, start, result", async () => {
    // The guest reaches the stand-in on one of the host's own addresses, which mediation keeps out of
    // reach unless allowed: the scaffold's README documents the same --egress-allow.
    const address = Object.values(NodeOs.networkInterfaces()).flatMap((list) => list ?? []).find((a) =>
      a.family === "IPv4" && !a.internal
    )?.address
    assert.isDefined(address, "this test needs a non-loopback IPv4 address on the host")
    const standIn = await startProviderStandIn(address)
    try {
      await ok(["init", "--dir", scratch, "--provider", "anthropic", "scaffolded"])
      const dir = NodePath.join(scratch, "scaffolded")
      const endpoint = `${address}:${standIn.port}`
      const withKey = (args: ReadonlyArray<string>) =>
        cliAsync(args, {
          stateDir,
          env: { MICROAGENT_BACKEND: "qemu", ANTHROPIC_API_KEY: "test-key" }
        })
      const created = await withKey([
        "create",
        "--file",
        NodePath.join(dir, "microagent.yaml"),
        "--secret",
        "ANTHROPIC_API_KEY=env:ANTHROPIC_API_KEY",
        "-e",
        `ANTHROPIC_BASE_URL=http://${endpoint}`,
        "--egress-allow",
        endpoint
      ])
      assert.strictEqual(created.code, 0, created.stderr)
      await ok(["cp", NodePath.join(dir, "demo", "input.txt"), "scaffolded:/workspace/input.txt"])
      const started = await withKey(["start", "scaffolded"])
      assert.strictEqual(started.code, 0, started.stderr)
      const result = json(await ma(["result", "--wait", "--timeout", "180", "scaffolded"]))
      const input = NodeFs.readFileSync(NodePath.join(dir, "demo", "input.txt"), "utf8").trim()
      assert.deepInclude(
        result,
        { status: "exited", exitCode: 0, stdout: `${standInReply(input)}\n` },
        result.stderr
      )
      assert.strictEqual(standIn.requests.length, 1)
      assert.strictEqual(standIn.requests[0]!.url, "/v1/messages")
      assert.strictEqual(standIn.requests[0]!.headers["x-api-key"], "test-key")
      const events = json(await ok(["events", "scaffolded", "--json"])).events as Array<
        { type: string; detail: string }
      >
      assert.deepStrictEqual(events.filter((e) => e.type === "setup").map((e) => e.detail.split(":")[0]), [
        "setup 1/2 ok",
        "setup 2/2 ok"
      ])

      // The image and the kernel are in the local stores now: a dry run names both, and boots nothing.
      const plan = json(await ok(["create", "--dry-run", "--json", "--image", defaultImage, "dry"]))
      assert.strictEqual(plan.image.pulled, true)
      assert.match(plan.image.digest, /^sha256:[0-9a-f]{64}$/)
      assert.match(plan.kernel.sha256, /^[0-9a-f]{64}$/)
      assert.isString(plan.kernel.name)
      assert.strictEqual(plan.resources.diskFrom, "image")
      assert.strictEqual((await ma(["inspect", "dry"])).code, 1, "a dry run creates nothing")
      await ok(["kill", "scaffolded"])
    } finally {
      await standIn.close()
    }
  })
})

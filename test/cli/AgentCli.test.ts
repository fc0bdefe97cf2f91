/**
 * The agent commands through the CLI on the fake backend: `run --setup`, `--image`, `--exec` and their
 * usage errors, `run`/`create --dry-run`, and `init` then `create --file` then `apply` (unchanged,
 * a dry run, a change, a refusal).
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterEach, assert, beforeEach, describe, it } from "vitest"
import { cliAsync, type CliResult, errorOf, stopRuntime } from "../support/cli.ts"

let stateDir: string
let scratch: string

const ma = (args: ReadonlyArray<string>, env: Record<string, string> = {}): Promise<CliResult> =>
  cliAsync(args, { stateDir, env: { MICROAGENT_BACKEND: "fake", ...env } })

const names = async () =>
  (JSON.parse((await ma(["list", "--json"])).stdout) as { workspaces: Array<{ name: string }> }).workspaces
    .map(
      (w) => w.name
    )

beforeEach(() => {
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-agentcli-"))
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-agentcli-scratch-"))
})
afterEach(async () => {
  await ma(["delete", "--force", ...(await names())])
  stopRuntime(stateDir)
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
  NodeFs.rmSync(scratch, { recursive: true, force: true })
})

describe("run --setup, --image, --exec, --dry-run", () => {
  it("runs setup steps before the command in the same boot; a failing step fails the run with its output", async () => {
    const ok = await ma(
      [
        "run",
        "--image",
        "alpine",
        "--setup",
        "echo one > marker",
        "--setup",
        "echo two >> marker",
        "--exec",
        "cat marker"
      ],
      { MICROAGENT_OUTPUT: "text" }
    )
    assert.strictEqual(ok.code, 0, ok.stderr)
    assert.strictEqual(ok.stdout, "one\ntwo\n")
    const failed = await ma(["run", "--setup", "echo broken >&2; exit 4", "alpine", "--", "echo", "never"])
    assert.strictEqual(failed.code, 1)
    assert.include(errorOf(failed).error.message, "setup 1/1 failed (exited 4)")
    assert.include(errorOf(failed).error.message, "broken")
    assert.notInclude(failed.stdout, "never")
    assert.deepStrictEqual(await names(), [])
  })

  it("refuses two images or two commands as usage errors", async () => {
    const images = await ma(["run", "--image", "alpine", "echo", "hi"])
    assert.strictEqual(images.code, 2)
    assert.include(errorOf(images).error.message, "two images given")
    assert.include(errorOf(images).error.remediation, "microagent run --image alpine -- echo hi")
    const commands = await ma(["run", "--exec", "echo hi", "alpine", "--", "echo", "again"])
    assert.strictEqual(commands.code, 2)
    assert.include(errorOf(commands).error.message, "two commands given")
  })

  it("an Agentfile's agent block gives run its command and egress envelope; --exec wins over agent.entry", async () => {
    const file = NodePath.join(scratch, "agent.yaml")
    NodeFs.writeFileSync(
      file,
      "image: alpine\nsetup:\n  - echo set > /marker\nagent:\n  entry: cat /marker; echo ran\n  allow: [api.example.com]\n"
    )
    const ran = await ma(["run", "--file", file], { MICROAGENT_OUTPUT: "text" })
    assert.strictEqual(ran.code, 0, ran.stderr)
    assert.strictEqual(ran.stdout, "set\nran\n")
    const plan = JSON.parse(
      (await ma(["run", "--dry-run", "--json", "--file", file, "--egress-allow", "b.example"])).stdout
    )
    assert.deepStrictEqual(plan.command, ["/bin/sh", "-c", "cat /marker; echo ran"])
    assert.deepStrictEqual(plan.network.egress.allow, ["api.example.com", "b.example"])
    const overridden = await ma(["run", "--file", file, "--exec", "echo mine"], { MICROAGENT_OUTPUT: "text" })
    assert.strictEqual(overridden.stdout, "mine\n")
    // An Agentfile's credential swaps need mitm; their keys are host-held secrets in the plan.
    NodeFs.writeFileSync(file, "agent:\n  entry: x\n  cred-swap: [openai]\n")
    const refused = await ma(["run", "--file", file], { OPENAI_API_KEY: "k" })
    assert.strictEqual(refused.code, 2)
    assert.include(errorOf(refused).error.message, "need --egress mitm")
    NodeFs.writeFileSync(file, "agent:\n  entry: x\n  egress: mitm\n  cred-swap: [openai]\n")
    const swapped = JSON.parse(
      (await ma(["run", "--dry-run", "--json", "--file", file], { OPENAI_API_KEY: "k" })).stdout
    )
    assert.deepStrictEqual(swapped.secrets, ["OPENAI_API_KEY=env:OPENAI_API_KEY (broker)"])
    assert.strictEqual(swapped.network.egress.mode, "mitm")
    // An Agentfile's broker endpoints reach the plan; --broker flags replace them.
    NodeFs.writeFileSync(
      file,
      "agent:\n  entry: x\n  broker:\n    upstream: https://api.example.com\n    secret: K=env:HOME\n    env: [API]\n"
    )
    const brokered = JSON.parse((await ma(["run", "--dry-run", "--json", "--file", file])).stdout)
    assert.deepStrictEqual(brokered.brokers, ["upstream=https://api.example.com;secret=K;base-url-env=API"])
    assert.deepStrictEqual(brokered.secrets, ["K=env:HOME (broker)"])
    const flagged = JSON.parse(
      (await ma(["run", "--dry-run", "--json", "--file", file, "--broker", "upstream=http://127.0.0.1:1"]))
        .stdout
    )
    assert.deepStrictEqual(flagged.brokers, ["upstream=http://127.0.0.1:1"])
  })

  it("--egress-policy FILE joins --egress-allow; caps reach the plan; the policy is refused with --egress off", async () => {
    const policy = NodePath.join(scratch, "policy.yaml")
    NodeFs.writeFileSync(policy, "allow: [api.example.com]\npassthrough: [.pypi.org]\n")
    const planned = await ma([
      "create",
      "--dry-run",
      "--json",
      "--image",
      "alpine",
      "--egress-policy",
      policy,
      "--egress-allow",
      "b.example",
      "--egress-max-bps",
      "1048576",
      "p1"
    ])
    assert.strictEqual(planned.code, 0, planned.stderr)
    const egress = JSON.parse(planned.stdout).network.egress
    assert.deepStrictEqual(egress.allow, ["b.example", "api.example.com"])
    assert.deepStrictEqual(egress.passthrough, [".pypi.org"])
    assert.strictEqual(egress.maxBps, 1048576)
    const off = await ma([
      "create",
      "--dry-run",
      "--image",
      "alpine",
      "--egress",
      "off",
      "--egress-policy",
      policy,
      "p2"
    ])
    assert.strictEqual(off.code, 2)
    assert.include(errorOf(off).error.message, "--egress-policy with --egress off")
    NodeFs.writeFileSync(policy, "allow: [a.example]\ndeny: [b.example]\n")
    const strict = await ma(["create", "--dry-run", "--image", "alpine", "--egress-policy", policy, "p3"])
    assert.strictEqual(strict.code, 2)
    assert.include(errorOf(strict).error.message, "deny")
  })

  it("create --setup-file adds a file's text as one step after --setup; an unreadable one is refused", async () => {
    const step = NodePath.join(scratch, "step.sh")
    NodeFs.writeFileSync(step, "echo from a file\necho second line\n")
    const planned = await ma([
      "create",
      "--dry-run",
      "--json",
      "--image",
      "alpine",
      "--setup",
      "echo flag",
      "--setup-file",
      step,
      "s1"
    ])
    assert.strictEqual(planned.code, 0, planned.stderr)
    assert.deepStrictEqual(JSON.parse(planned.stdout).setup, [
      "echo flag",
      "echo from a file\necho second line\n"
    ])
    const missing = await ma([
      "create",
      "--image",
      "alpine",
      "--setup-file",
      NodePath.join(scratch, "nope"),
      "s2"
    ])
    assert.strictEqual(missing.code, 2)
    assert.include(errorOf(missing).error.message, "a setup file cannot be read")
  })

  it("--dry-run prints the plan and creates nothing", async () => {
    const planned = await ma([
      "run",
      "--dry-run",
      "--json",
      "--image",
      "alpine:3.20",
      "--name",
      "dry",
      "--setup",
      "echo s",
      "-p",
      "8080:80",
      "--cpus",
      "3",
      "--exec",
      "echo hi"
    ])
    assert.strictEqual(planned.code, 0, planned.stderr)
    const plan = JSON.parse(planned.stdout)
    assert.deepInclude(plan, {
      kind: "run",
      name: "dry",
      backend: "fake",
      setup: ["echo s"],
      command: ["/bin/sh", "-c", "echo hi"]
    })
    assert.deepStrictEqual(plan.image, { ref: "alpine:3.20", pulled: false })
    assert.deepStrictEqual(plan.resources, { memoryMiB: 512, cpus: 3, diskFrom: "unknown" })
    assert.strictEqual(plan.network.ports[0].hostPort, 8080)
    const text = await ma(["create", "--dry-run", "--image", "alpine", "--entrypoint", "echo e", "c1"], {
      MICROAGENT_OUTPUT: "text"
    })
    assert.strictEqual(text.code, 0, text.stderr)
    assert.match(text.stdout, /^plan: +create c1: nothing booted, pulled or written$/m)
    assert.match(text.stdout, /^image: +alpine \(not pulled: pulled at create\)$/m)
    assert.match(text.stdout, /^entrypoint: +echo e$/m)
    assert.deepStrictEqual(await names(), [])
  })
})

describe("init, create --file, apply", () => {
  it("the scaffold creates a workspace; apply: unchanged, --dry-run, a change, a refusal", async () => {
    const init = await ma(["init", "--dir", scratch, "--provider", "openai", "--json", "bot"])
    assert.strictEqual(init.code, 0, init.stderr)
    assert.strictEqual(JSON.parse(init.stdout).directory, NodePath.join(scratch, "bot"))
    const again = await ma(["init", "--dir", scratch, "bot"])
    assert.strictEqual(again.code, 1)
    assert.strictEqual(errorOf(again).error.kind, "conflict")
    const spec = NodePath.join(scratch, "bot", "microagent.yaml")
    const created = await ma(["create", "--file", spec])
    assert.strictEqual(created.code, 0, created.stderr)
    assert.deepStrictEqual(await names(), ["bot"])

    const unchanged = await ma(["apply", "--file", spec, "--json"])
    assert.strictEqual(unchanged.code, 0, unchanged.stderr)
    assert.deepInclude(JSON.parse(unchanged.stdout), { workspace: "bot", changed: false, changes: [] })

    NodeFs.writeFileSync(
      spec,
      NodeFs.readFileSync(spec, "utf8").replace("MODEL: gpt-4o-mini", "MODEL: gpt-4o")
    )
    const preview = await ma(["apply", "--file", spec, "--dry-run"], { MICROAGENT_OUTPUT: "text" })
    assert.strictEqual(preview.code, 0, preview.stderr)
    assert.include(preview.stdout, "bot (prepared): would change 1 field")
    assert.include(preview.stdout, 'env: {"MODEL":"gpt-4o-mini"} -> {"MODEL":"gpt-4o"}')
    const applied = await ma(["apply", "--file", spec, "bot", "--json"])
    assert.deepStrictEqual(JSON.parse(applied.stdout).changes.map((c: { field: string }) => c.field), ["env"])
    const record = JSON.parse((await ma(["inspect", "bot", "--json"])).stdout).workspace
    assert.deepStrictEqual(record.env, { MODEL: "gpt-4o" })

    NodeFs.writeFileSync(spec, NodeFs.readFileSync(spec, "utf8").replace(/^image: .*$/m, "image: debian:12"))
    const refused = await ma(["apply", "--file", spec])
    assert.strictEqual(refused.code, 1)
    assert.strictEqual(errorOf(refused).error.kind, "conflict")
    assert.include(errorOf(refused).error.message, "image")
  })
})

/**
 * `cp`, `artifacts` and `--output` through the CLI on the fake backend: usage errors, copies on its
 * directory disk (test/files/FakeCopy.test.ts has the rules), declared outputs recorded, listed, fetched
 * and (when they cannot be collected) recorded as not collected by `run`.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterEach, assert, beforeEach, describe, it } from "vitest"
import { cliAsync, errorOf, stopRuntime } from "../support/cli.ts"

let stateDir: string
const ma = (args: ReadonlyArray<string>) => cliAsync(["--json", ...args], { stateDir })

beforeEach(() => {
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-files-cli-"))
})
afterEach(async () => {
  await ma(["delete", "--force", "w1"])
  stopRuntime(stateDir)
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("cp and artifacts on the fake backend", () => {
  it("rejects malformed copies before touching anything", async () => {
    for (
      const args of [
        ["cp", "a", "b"],
        ["cp", "w1:/a", "w2:/b"],
        ["cp", "./x", "w1:relative"],
        ["cp", "w1:/etc/../passwd", "."]
      ]
    ) {
      const result = await ma(args)
      assert.strictEqual(result.code, 2, `${args.join(" ")}: ${result.stderr}`)
    }
    // A name that is not a workspace name never reaches the disk.
    for (const verb of ["ls", "rm"]) {
      const climbing = await ma(["artifacts", verb, ".."])
      assert.strictEqual(climbing.code, 2, climbing.stderr)
    }
    assert.isTrue(NodeFs.existsSync(NodePath.join(stateDir, "state.db")))
    const missing = await ma(["cp", "/etc/hostname", "nobody:/tmp"])
    assert.strictEqual(errorOf(missing).error.kind, "not_found")
  })

  it("records declared outputs, lists them, and copies on the fake backend's directory disk", async () => {
    const created = await ma([
      "create",
      "--backend",
      "fake",
      "--image",
      "alpine",
      "--output",
      "report=/root/report.txt",
      "--output",
      "logs=/var/log/app",
      "w1"
    ])
    assert.strictEqual(created.code, 0, created.stderr)
    assert.deepStrictEqual(JSON.parse(created.stdout).outputs, [
      { name: "report", path: "/root/report.txt" },
      { name: "logs", path: "/var/log/app" }
    ])
    const listed = JSON.parse((await ma(["artifacts", "ls", "w1"])).stdout)
    assert.deepStrictEqual(listed, {
      workspace: "w1",
      exists: true,
      artifacts: [
        { name: "report", path: "/root/report.txt", collected: false },
        { name: "logs", path: "/var/log/app", collected: false }
      ]
    })
    const source = NodePath.join(stateDir, "report-source.txt")
    NodeFs.writeFileSync(source, "the report\n")
    const copy = await ma(["cp", source, "w1:/root/report.txt"])
    assert.strictEqual(copy.code, 0, copy.stderr)
    assert.strictEqual(JSON.parse(copy.stdout).via, "offline")
    assert.strictEqual(
      NodeFs.readFileSync(
        NodePath.join(stateDir, "workspaces", "w1", "rootfs", "root", "report.txt"),
        "utf8"
      ),
      "the report\n"
    )
    const fetched = NodeFs.mkdtempSync(NodePath.join(stateDir, "fetched-"))
    const get = await ma(["artifacts", "get", "w1", "report", fetched])
    assert.strictEqual(get.code, 0, get.stderr)
    assert.strictEqual(NodeFs.readFileSync(NodePath.join(fetched, "report.txt"), "utf8"), "the report\n")
    const absent = await ma(["artifacts", "get", "w1", "logs", fetched])
    assert.strictEqual(errorOf(absent).error.kind, "not_found", absent.stderr)
    const unknown = await ma(["artifacts", "get", "w1", "nope", stateDir])
    assert.strictEqual(errorOf(unknown).error.kind, "not_found")
    assert.deepStrictEqual(JSON.parse((await ma(["artifacts", "rm", "w1"])).stdout), {
      workspace: "w1",
      removed: false
    })
  })

  it("run records outputs it could not collect without failing, and the collection is private", async () => {
    const run = await ma([
      "run",
      "--backend",
      "fake",
      "--name",
      "r1",
      "--output",
      "x=/root/x",
      "alpine",
      "--",
      "true"
    ])
    assert.strictEqual(run.code, 0, run.stderr)
    const listed = JSON.parse((await ma(["artifacts", "ls", "r1"])).stdout)
    assert.isFalse(listed.exists)
    assert.strictEqual(listed.artifacts.length, 1)
    assert.isFalse(listed.artifacts[0].collected)
    assert.match(listed.artifacts[0].error, /\/root\/x does not exist/)
    const collection = NodePath.join(stateDir, "artifacts", "r1")
    assert.strictEqual(NodeFs.statSync(collection).mode & 0o777, 0o700)
    assert.strictEqual(NodeFs.statSync(NodePath.join(collection, "manifest.json")).mode & 0o777, 0o600)
    const gone = await ma(["artifacts", "get", "r1", "x", stateDir])
    assert.strictEqual(errorOf(gone).error.kind, "not_found")
    assert.isTrue(JSON.parse((await ma(["artifacts", "rm", "r1"])).stdout).removed)
    assert.strictEqual(errorOf(await ma(["artifacts", "ls", "r1"])).error.kind, "not_found")
  })

  it("refuses bad --output declarations as usage errors", async () => {
    for (const bad of ["noequals", "x=relative", "../x=/a", "a=/root/../etc", "a=/"]) {
      const refused = await ma(["create", "--backend", "fake", "--image", "alpine", "--output", bad, "w1"])
      assert.strictEqual(refused.code, 2, `${bad}: ${refused.stderr}`)
    }
    const twice = await ma([
      "create",
      "--backend",
      "fake",
      "--image",
      "alpine",
      "--output",
      "a=/x",
      "--output",
      "a=/y",
      "w1"
    ])
    assert.strictEqual(twice.code, 2)
  })
})

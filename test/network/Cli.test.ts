/** The `network` verbs and the networking flags through the bundled CLI (no VM: the fake backend). */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterEach, assert, beforeEach, describe, it } from "vitest"
import { cliAsync, type CliResult, errorOf } from "../support/cli.ts"

let stateDir: string
beforeEach(() => {
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-netcli-"))
})
afterEach(() => NodeFs.rmSync(stateDir, { recursive: true, force: true }))

const ma = (args: ReadonlyArray<string>): Promise<CliResult> =>
  cliAsync(args, { stateDir, env: { MICROAGENT_BACKEND: "fake" } })

describe("microagent network", () => {
  it("gives networks created by concurrent processes distinct subnets", async () => {
    const names = ["n1", "n2", "n3", "n4", "n5", "n6"]
    const made = await Promise.all(names.map((name) => ma(["network", "create", name, "--json"])))
    for (const result of made) assert.strictEqual(result.code, 0, result.stderr)
    const subnets = made.map((result) => JSON.parse(result.stdout).subnet as string)
    assert.strictEqual(new Set(subnets).size, names.length, subnets.join(" "))
    const listed = JSON.parse((await ma(["network", "ls", "--json"])).stdout).networks
    assert.deepStrictEqual(listed.map((n: { name: string }) => n.name), names)
  })

  it("reports bad input as usage errors and unknown networks as not found", async () => {
    const badSubnet = await ma(["network", "create", "x", "--subnet", "10.1.2.3/24"])
    assert.strictEqual(badSubnet.code, 2, badSubnet.stderr)
    assert.include(errorOf(badSubnet).error.message, "host bits set")
    const missing = await ma(["network", "inspect", "nope"])
    assert.strictEqual(errorOf(missing).error.kind, "not_found")
    const mode = await ma(["create", "--network", "user", "--network", "isolated", "--image", "alpine", "w"])
    assert.strictEqual(mode.code, 2, mode.stderr)
    const publish = await ma(["create", "-p", "8080:80/udp", "--image", "alpine", "w"])
    assert.strictEqual(publish.code, 2, publish.stderr)
    assert.include(errorOf(publish).error.message, "only TCP")
  })

  it("takes published ports from microagent.yaml network.forwards", async () => {
    const spec = NodePath.join(stateDir, "spec.yaml")
    NodeFs.writeFileSync(spec, "network:\n  forwards:\n    - { hostPort: 18080, guestPort: 80 }\n")
    const created = await ma(["create", "--file", spec, "--image", "alpine", "--json", "fwd"])
    assert.strictEqual(created.code, 0, created.stderr)
    assert.deepStrictEqual(JSON.parse(created.stdout).ports, [
      { hostIp: "127.0.0.1", hostPort: 18080, guestPort: 80, protocol: "tcp" }
    ])
  })
})

/**
 * A Debian minbase image, built in the test setup from Debian's packages with mmdebstrap (cached per
 * machine), pushed to a loopback registry and booted as a real microVM: a full distribution userland,
 * owners and modes as dpkg set them.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { cliAsync, type CliResult, stopRuntime } from "../support/cli.ts"
import { hostArchitecture, minbaseTarball, pushSpec } from "../support/images.ts"
import { requireTool, startRegistry, type TestRegistry } from "../support/registry.ts"

let registry: TestRegistry
let stateDir: string
let scratch: string
let minbase: string

const ma = (args: ReadonlyArray<string>): Promise<CliResult> =>
  cliAsync(args, { stateDir, env: { MICROAGENT_BACKEND: "qemu" } })

beforeAll(async () => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-debian-"))
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-debian-scratch-"))
  registry = await startRegistry()
  minbase = pushSpec(registry, scratch, "debian:minbase", [{
    layers: [NodeFs.readFileSync(minbaseTarball())],
    architecture: hostArchitecture,
    config: { Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], Cmd: ["bash"] }
  }]).ref
  const pulled = await ma(["image", "pull", minbase])
  assert.strictEqual(pulled.code, 0, pulled.stderr)
}, 900_000)

afterAll(async () => {
  stopRuntime(stateDir)
  await registry?.stop()
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
  NodeFs.rmSync(scratch, { recursive: true, force: true })
})

describe("a Debian minbase image", () => {
  it("boots and runs Debian's own tools, as the users dpkg made", async () => {
    const out = await ma([
      "run",
      minbase,
      "--",
      "bash",
      "-c",
      "cat /etc/debian_version; dpkg -s coreutils | grep ^Status; stat -c '%U %a' /var/mail /usr/bin/passwd; runuser -u nobody -- id -u"
    ])
    assert.strictEqual(out.code, 0, `${out.stdout}\n${out.stderr}`)
    const lines = JSON.parse(out.stdout).result.stdout.trim().split("\n")
    assert.match(lines[0], /^12\.\d+/)
    assert.strictEqual(lines[1], "Status: install ok installed")
    // setuid/setgid are stripped from files unless --allow-guest-setuid (passwd is 4755 in Debian); a
    // directory's setgid (group inheritance) is kept (docs/images.md).
    assert.strictEqual(lines[2], "root 2775")
    assert.strictEqual(lines[3], "root 755")
    assert.strictEqual(lines[4], "65534")
  })
})

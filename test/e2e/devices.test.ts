/**
 * Images whose layers hold device nodes and FIFOs (every debootstrap or `docker import` rootfs carries
 * /dev/null and friends): pulled and run by default, with the nodes made only inside the guest's ext4,
 * never on the host; refused, naming the entry, with --refuse-devices. Real registry, real QEMU, the CLI.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { cliAsync, type CliResult, errorOf, stopRuntime } from "../support/cli.ts"
import { busyboxConfig, busyboxLayers, hostArchitecture, pushSpec } from "../support/images.ts"
import { qemuProcessesMentioning } from "../support/kernel.ts"
import { requireTool, startRegistry, type TestRegistry } from "../support/registry.ts"

let registry: TestRegistry
let stateDir: string
let scratch: string
let image: string

const ma = (args: ReadonlyArray<string>): Promise<CliResult> =>
  cliAsync(args, { stateDir, env: { MICROAGENT_BACKEND: "qemu" } })

/** Character and block devices and FIFOs anywhere under `dir` (sockets are the runtime's own). */
const specialFiles = (dir: string): Array<string> =>
  NodeFs.readdirSync(dir, { recursive: true, encoding: "utf8" }).filter((rel) => {
    const st = NodeFs.lstatSync(NodePath.join(dir, rel), { throwIfNoEntry: false })
    return st !== undefined && (st.isCharacterDevice() || st.isBlockDevice() || st.isFIFO())
  })

beforeAll(async () => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("debugfs", "e2fsprogs")
  requireTool("skopeo", "skopeo")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-devices-"))
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-devices-scratch-"))
  registry = await startRegistry()
  image = pushSpec(registry, scratch, "devices:1", [{
    layers: [
      ...busyboxLayers(),
      [
        { path: "opt/", type: "dir" },
        { path: "opt/nodes/", type: "dir" },
        { path: "opt/nodes/null", type: "char", devmajor: 1, devminor: 3, mode: 0o666 },
        { path: "opt/nodes/loop9", type: "block", devmajor: 7, devminor: 9, mode: 0o660, gid: 6 },
        { path: "opt/nodes/pipe", type: "fifo", mode: 0o600 },
        // What a debootstrap rootfs carries (the guest mounts its own /dev over it).
        { path: "dev/", type: "dir" },
        { path: "dev/null", type: "char", devmajor: 1, devminor: 3, mode: 0o666 },
        { path: "dev/full", type: "char", devmajor: 1, devminor: 7, mode: 0o666 }
      ]
    ],
    architecture: hostArchitecture,
    config: busyboxConfig
  }]).ref
}, 600_000)

afterAll(async () => {
  stopRuntime(stateDir)
  for (const pid of qemuProcessesMentioning(stateDir)) process.kill(pid, "SIGKILL")
  await registry?.stop()
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
  NodeFs.rmSync(scratch, { recursive: true, force: true })
})

describe("device nodes in image layers", () => {
  it("refuses them with --refuse-devices on pull and on run, naming the entry", async () => {
    for (
      const args of [["image", "pull", "--refuse-devices", image], [
        "run",
        "--refuse-devices",
        image,
        "--",
        "true"
      ]]
    ) {
      const refused = await ma(["--json", ...args])
      assert.notStrictEqual(refused.code, 0, `${args.join(" ")} should fail: ${refused.stdout}`)
      const { error } = errorOf(refused)
      assert.strictEqual(error.kind, "policy_denied", error.message)
      assert.include(error.message, `"opt/nodes/null" is a char device (1:3)`)
      assert.include(error.remediation, "--refuse-devices")
    }
    assert.deepStrictEqual(specialFiles(stateDir), [])
  }, 600_000)

  it("pulls and runs them by default: the nodes exist in the guest, none on the host", async () => {
    const pulled = await ma(["--json", "image", "pull", image])
    assert.strictEqual(pulled.code, 0, pulled.stderr)
    const ran = await ma(["--json", "run", image, "--", "ls", "-ln", "/opt/nodes"])
    assert.strictEqual(ran.code, 0, ran.stderr)
    const listing = (JSON.parse(ran.stdout) as { result: { stdout: string } }).result.stdout
    assert.match(listing, /^crw-rw-rw-\s+1\s+0\s+0\s+1,\s+3 .* null$/m, listing)
    assert.match(listing, /^brw-rw----\s+1\s+0\s+6\s+7,\s+9 .* loop9$/m, listing)
    assert.match(listing, /^prw-------\s+1\s+0\s+0\s+0 .* pipe$/m, listing)
    // The devices lived only in the ledger and the guest's ext4: nothing of the kind on the host.
    assert.deepStrictEqual(specialFiles(stateDir), [])
  }, 600_000)
})

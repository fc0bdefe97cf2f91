/**
 * MCP host roots on a real QEMU microVM, with the official SDK client: copies in and out inside the
 * granted root work, symlinks out of it are refused for reads, a symlink the guest planted through an
 * earlier copy out cannot redirect a later write out of the root, and a server without roots moves
 * nothing. One workspace (the built-in busybox image) serves every case.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { connect, type Connected, type Envelope, makeStateDir, removeStateDir } from "../mcp/mcpClient.ts"

const target = { backend: "qemu", image: "microagent.local/busybox:latest" } as const

let stateDir: string
let base: string
let root: string
let outside: string
let mcp: Connected
let key = 0

const call = (tool: string, args: Record<string, unknown>, server = mcp) =>
  server.call(tool, { ...args, idempotency_key: `k${key++}` })

const ok = async (tool: string, args: Record<string, unknown>) => {
  const envelope = await call(tool, args)
  assert.isTrue(envelope.ok, `${tool} ${JSON.stringify(args)}: ${JSON.stringify(envelope.error)}`)
  return envelope.result
}

const denied = (envelope: Envelope, what: string) => {
  assert.isFalse(envelope.ok, what)
  assert.strictEqual(envelope.error?.kind, "policy_denied", `${what}: ${JSON.stringify(envelope.error)}`)
}

const guestSh = async (script: string) =>
  (await ok("workspace.exec", { name: "roots", argv: ["sh", "-c", script] })).stdout as string

const outsideUntouched = () => {
  assert.deepStrictEqual(NodeFs.readdirSync(outside), ["victim.txt"], "nothing written outside the root")
  assert.strictEqual(NodeFs.readFileSync(NodePath.join(outside, "victim.txt"), "utf8"), "victim\n")
}

describe("MCP host roots on a real workspace", () => {
  beforeAll(async () => {
    stateDir = await makeStateDir(target)
    base = NodeFs.realpathSync(NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "mcp-roots-")))
    root = NodePath.join(base, "root")
    outside = NodePath.join(base, "outside")
    NodeFs.mkdirSync(root)
    NodeFs.mkdirSync(outside)
    NodeFs.writeFileSync(NodePath.join(outside, "victim.txt"), "victim\n")
    NodeFs.writeFileSync(NodePath.join(root, "in.txt"), "from the root\n")
    NodeFs.writeFileSync(NodePath.join(root, "token"), "real-tier-token")
    NodeFs.symlinkSync(NodePath.join(outside, "victim.txt"), NodePath.join(root, "f"))
    NodeFs.symlinkSync(outside, NodePath.join(root, "link"))
    mcp = await connect(stateDir, target, { args: ["--host-root", root] })
    await ok("workspace.create", {
      image: target.image,
      name: "roots",
      secrets: [`TOKEN=file:${NodePath.join(root, "token")}`],
      outputs: ["report=/root/data.txt"]
    })
    await ok("workspace.start", { name: "roots" })
  })
  afterAll(async () => {
    await mcp?.call("workspace.delete", { name: "roots", force: true })
    await mcp?.close()
    await removeStateDir(stateDir)
    NodeFs.rmSync(base, { recursive: true, force: true })
  })

  it("copies in inside the root; refuses a symlink out of it; delivers a file secret from the root", async () => {
    await ok("workspace.cp", { source: NodePath.join(root, "in.txt"), target: "roots:/root/in.txt" })
    assert.strictEqual(await guestSh("cat /root/in.txt"), "from the root\n")
    denied(
      await call("workspace.cp", { source: NodePath.join(root, "f"), target: "roots:/root/f" }),
      "R/f -> outside"
    )
    denied(
      await call("workspace.cp", {
        source: NodePath.join(root, "link", "victim.txt"),
        target: "roots:/root/v"
      }),
      "R/link/victim.txt"
    )
    denied(
      await call("workspace.cp", { source: "/etc/passwd", target: "roots:/root/p" }),
      "an absolute path outside"
    )
    assert.strictEqual(
      await guestSh("ls /root/f /root/v /root/p 2>/dev/null | wc -l"),
      "0\n",
      "nothing copied in"
    )
    assert.strictEqual(await guestSh("cat /run/secrets/TOKEN"), "real-tier-token")
  })

  it("a symlink planted by an earlier copy out cannot redirect a later write out of the root", async () => {
    await guestSh(
      `mkdir -p /root/tree && ln -s ${outside} /root/tree/esc && ln -s ${outside}/victim.txt /root/tree/f`
        + " && echo planted > /root/data.txt"
    )
    await ok("workspace.cp", { source: "roots:/root/tree", target: root })
    assert.isTrue(
      NodeFs.lstatSync(NodePath.join(root, "tree", "esc")).isSymbolicLink(),
      "the guest's link arrived"
    )
    for (
      const host of [
        NodePath.join(root, "tree", "esc"),
        NodePath.join(root, "tree", "esc", "data.txt"),
        NodePath.join(root, "tree", "f"),
        NodePath.join(root, "..", "data.txt"),
        outside
      ]
    ) {
      denied(await call("workspace.cp", { source: "roots:/root/data.txt", target: host }), host)
      denied(
        await call("artifacts.get", { name: "roots", artifact: "report", target: host }),
        `artifacts.get ${host}`
      )
    }
    outsideUntouched()
    assert.isFalse(NodeFs.existsSync(NodePath.join(base, "data.txt")))
    // Inside the root, both work.
    await ok("workspace.cp", { source: "roots:/root/data.txt", target: NodePath.join(root, "tree") })
    assert.strictEqual(NodeFs.readFileSync(NodePath.join(root, "tree", "data.txt"), "utf8"), "planted\n")
    await ok("artifacts.get", {
      name: "roots",
      artifact: "report",
      target: NodePath.join(root, "report.txt")
    })
    assert.strictEqual(NodeFs.readFileSync(NodePath.join(root, "report.txt"), "utf8"), "planted\n")
    outsideUntouched()
  })

  it("a server without roots refuses cp both ways and artifacts.get, and nothing moves", async () => {
    const bare = await connect(stateDir, target)
    try {
      denied(
        await call(
          "workspace.cp",
          { source: NodePath.join(root, "in.txt"), target: "roots:/root/none" },
          bare
        ),
        "cp in"
      )
      denied(
        await call(
          "workspace.cp",
          { source: "roots:/root/data.txt", target: NodePath.join(root, "none") },
          bare
        ),
        "cp out"
      )
      denied(
        await call("artifacts.get", {
          name: "roots",
          artifact: "report",
          target: NodePath.join(root, "none")
        }, bare),
        "artifacts.get"
      )
      denied(await call("workspace.start", { name: "roots" }, bare), "a start re-resolving a file secret")
      assert.include(bare.stderr(), "policy_denied")
    } finally {
      await bare.close()
    }
    assert.strictEqual(await guestSh("ls /root/none 2>/dev/null | wc -l"), "0\n")
    assert.isFalse(NodeFs.existsSync(NodePath.join(root, "none")))
    const events = (await mcp.call("workspace.events", { name: "roots" })).result
    assert.include(events.events.map((e: { type: string }) => e.type), "policy_denied")
  })
})

/**
 * What an MCP client may touch on the server's host, tried with the official SDK client: no roots means
 * no host file access; `--host-root` confines every host path (symlinks, `..`, absolute paths); client
 * roots narrow the operator's, and a change takes effect for the next call; secrets resolve only as the
 * operator allowed, and a refused one's value appears nowhere. A call that gets past the host check may
 * still fail in the runtime for its own reasons; the copies on a real VM are in test/e2e/mcp-roots.test.ts.
 */
import { spawnSync } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { confinedProcedures } from "../../src/mcp/Confined.ts"
import { Rpcs } from "../../src/rpc/Rpcs.ts"
import {
  binPath,
  connect,
  type Connected,
  type Envelope,
  makeStateDir,
  removeStateDir,
  targetFromEnvironment
} from "./mcpClient.ts"

const target = targetFromEnvironment()

const hiddenValue = "hidden-env-value-7f3a"
const outsideValue = "outside-secret-value-91c2"

describe("serve mcp host access", () => {
  let stateDir: string
  let base: string
  let root: string
  let outside: string
  const open: Array<Connected> = []

  const server = async (options: Parameters<typeof connect>[2] = {}) => {
    const mcp = await connect(stateDir, target, {
      ...options,
      env: { HIDDEN: hiddenValue, ...options.env }
    })
    open.push(mcp)
    return mcp
  }

  const denied = (envelope: Envelope, what: string) => {
    assert.isFalse(envelope.ok, `${what}: ${JSON.stringify(envelope)}`)
    assert.strictEqual(envelope.error?.kind, "policy_denied", `${what}: ${JSON.stringify(envelope.error)}`)
    assert.isString(envelope.error?.remediation)
  }

  /** Got past the host check (what the runtime then made of the copy is not this test's concern). */
  const passed = (envelope: Envelope, what: string) => {
    assert.notStrictEqual(envelope.error?.kind, "policy_denied", `${what}: ${JSON.stringify(envelope.error)}`)
  }

  beforeAll(async () => {
    stateDir = await makeStateDir(target)
    base = NodeFs.realpathSync(NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "mcp-host-")))
    root = NodePath.join(base, "root")
    outside = NodePath.join(base, "outside")
    for (const dir of [root, outside, NodePath.join(root, "sub"), NodePath.join(root, "other")]) {
      NodeFs.mkdirSync(dir, { recursive: true })
    }
    NodeFs.writeFileSync(NodePath.join(outside, "secret.txt"), outsideValue)
    NodeFs.writeFileSync(NodePath.join(outside, ".env"), `KEY=${outsideValue}\n`)
    NodeFs.writeFileSync(NodePath.join(root, "in.txt"), "in the root\n")
    NodeFs.writeFileSync(NodePath.join(root, "sub", "in.txt"), "in sub\n")
    NodeFs.writeFileSync(NodePath.join(root, "other", "in.txt"), "in other\n")
    NodeFs.writeFileSync(NodePath.join(root, "token.txt"), "token-in-root")
    NodeFs.writeFileSync(NodePath.join(root, "app.env"), "X=dotenv-value\n")
    NodeFs.symlinkSync(outside, NodePath.join(root, "link"))
    NodeFs.symlinkSync(NodePath.join(outside, "secret.txt"), NodePath.join(root, "f"))
    NodeFs.symlinkSync(NodePath.join(root, "in.txt"), NodePath.join(root, "inner-link"))
  })
  afterAll(async () => {
    for (const mcp of open) await mcp.close()
    await removeStateDir(stateDir)
    NodeFs.rmSync(base, { recursive: true, force: true })
  })

  it("confines every procedure that carries a host path or secret references", () => {
    // A procedure added to the RPC API with a host path must be confined for MCP tools too.
    // Fields whose names look like host paths but hold workspace names.
    const workspaceNames: Record<string, ReadonlyArray<string>> = { clone: ["source", "target"] }
    const payloadFields = [...Rpcs.requests.values()].flatMap((rpc) => {
      const fields = (rpc.payloadSchema as unknown as { fields?: Record<string, unknown> }).fields ?? {}
      return Object.keys(fields).filter((f) => /path|mounts|secrets|file|dir|source|target/i.test(f))
        .filter((f) => !(workspaceNames[rpc._tag] ?? []).includes(f))
        .map((f) => [rpc._tag, f] as const)
    })
    const carrying = [...new Set(payloadFields.map(([tag]) => tag))].sort()
    assert.deepStrictEqual(carrying, [...confinedProcedures].sort(), JSON.stringify(payloadFields))
  })

  it("without roots: no host file access and no secrets; each denial is logged", async () => {
    const mcp = await server()
    await mcp.call("workspace.create", { image: target.image, name: "noroot", idempotency_key: "n0" })
    const described = await mcp.call("microagent.describe")
    assert.deepStrictEqual(described.result.hostAccess.operatorRoots, [])
    assert.deepStrictEqual(described.result.hostAccess.effectiveRoots, [])
    const target_ = NodePath.join(root, "never.txt")
    const calls: Array<[string, Record<string, unknown>]> = [
      ["workspace.cp", { source: NodePath.join(root, "in.txt"), target: "noroot:/tmp/in.txt" }],
      ["workspace.cp", { source: "/etc/shadow", target: "noroot:/root/shadow" }],
      ["workspace.cp", { source: "noroot:/etc/hostname", target: target_ }],
      ["artifacts.get", { name: "noroot", artifact: "x", target: target_ }],
      ["workspace.create", { image: target.image, secrets: [`T=file:${NodePath.join(root, "token.txt")}`] }],
      ["workspace.create", { image: target.image, secrets: ["T=env:HIDDEN"] }],
      ["workspace.create", { image: target.image, volumes: [`${NodePath.join(root, "b.tar")}:/data`] }]
    ]
    for (const [tool, args] of calls) {
      const refused = await mcp.call(tool, args)
      denied(refused, `${tool} ${JSON.stringify(args)}`)
      assert.include(
        refused.error?.remediation ?? "",
        tool === "workspace.create" && JSON.stringify(args).includes("env:")
          ? "--allow-secret"
          : "--host-root"
      )
      assert.notInclude(JSON.stringify(refused), hiddenValue)
    }
    const grant = await mcp.call("workspace.cp", { source: "/etc/hostname", target: "noroot:/tmp/x" })
    assert.include(grant.error?.message ?? "", "grants no host file access")
    assert.isFalse(NodeFs.existsSync(target_), "nothing written")
    const listed = await mcp.call("workspace.list")
    assert.deepStrictEqual(listed.result.workspaces.map((w: { name: string }) => w.name), ["noroot"])
    assert.include(mcp.stderr(), "policy_denied")
    // A denial naming a workspace is in its events.
    const events = await mcp.call("workspace.events", { name: "noroot" })
    assert.include(events.result.events.map((e: { type: string }) => e.type), "policy_denied")
    await mcp.call("workspace.delete", { name: "noroot", idempotency_key: "n1" })
  })

  it("--host-root: paths inside work; symlinks out, .. and absolute paths outside are refused", async () => {
    const mcp = await server({ args: ["--host-root", root] })
    await mcp.call("workspace.create", { image: target.image, name: "r1", idempotency_key: "r0" })
    const described = await mcp.call("microagent.describe")
    assert.deepStrictEqual(described.result.hostAccess.effectiveRoots, [root])
    assert.isFalse(described.result.hostAccess.clientDeclaresRoots)
    const inside = [
      { source: NodePath.join(root, "in.txt"), target: "r1:/tmp/in.txt" },
      { source: NodePath.join(root, "sub", "..", "in.txt"), target: "r1:/tmp/in.txt" },
      { source: NodePath.join(root, "inner-link"), target: "r1:/tmp/in.txt" },
      { source: NodePath.join(root, "sub"), target: "r1:/tmp" },
      { source: "r1:/etc/hostname", target: NodePath.join(root, "out.txt") },
      { source: "r1:/etc/hostname", target: NodePath.join(root, "sub") }
    ]
    let key = 0
    for (const args of inside) {
      passed(await mcp.call("workspace.cp", { ...args, idempotency_key: `c${key++}` }), JSON.stringify(args))
    }
    const refused = [
      { source: NodePath.join(root, "f"), target: "r1:/tmp/x" },
      { source: NodePath.join(root, "link", "secret.txt"), target: "r1:/tmp/x" },
      { source: NodePath.join(root, "link"), target: "r1:/tmp/x" },
      { source: NodePath.join(root, "..", "outside", "secret.txt"), target: "r1:/tmp/x" },
      { source: "/etc/shadow", target: "r1:/root/shadow" },
      // Outside the roots, a missing path is refused like any other: no answer tells what exists there.
      { source: NodePath.join(outside, "missing.txt"), target: "r1:/tmp/x" },
      { source: NodePath.join(root, "link", "missing", "deeper"), target: "r1:/tmp/x" },
      { source: "r1:/etc/hostname", target: NodePath.join(root, "link") },
      { source: "r1:/etc/hostname", target: NodePath.join(root, "link", "planted.txt") },
      { source: "r1:/etc/hostname", target: NodePath.join(root, "f") },
      { source: "r1:/etc/hostname", target: NodePath.join(root, "inner-link") },
      { source: "r1:/etc/hostname", target: NodePath.join(root, "..", "escaped.txt") },
      { source: "r1:/etc/hostname", target: "/tmp" }
    ]
    for (const args of refused) {
      denied(await mcp.call("workspace.cp", { ...args, idempotency_key: `c${key++}` }), JSON.stringify(args))
    }
    const missing = await mcp.call("workspace.cp", {
      source: NodePath.join(root, "missing.txt"),
      target: "r1:/tmp/x",
      idempotency_key: `c${key++}`
    })
    assert.strictEqual(
      missing.error?.kind,
      "not_found",
      "inside a root, a missing path is said to be missing"
    )
    denied(
      await mcp.call("artifacts.get", {
        name: "r1",
        artifact: "a",
        target: NodePath.join(root, "link"),
        idempotency_key: "a1"
      }),
      "artifacts.get to a symlink"
    )
    passed(
      await mcp.call("artifacts.get", {
        name: "r1",
        artifact: "a",
        target: NodePath.join(root, "sub"),
        idempotency_key: "a2"
      }),
      "artifacts.get inside"
    )
    denied(
      await mcp.call("workspace.create", {
        image: target.image,
        volumes: [`${NodePath.join(root, "link", "b.tar")}:/data`]
      }),
      "a bundle through a symlink out"
    )
    assert.deepStrictEqual(
      NodeFs.readdirSync(outside).sort(),
      [".env", "secret.txt"],
      "nothing written outside"
    )
    assert.strictEqual(NodeFs.readFileSync(NodePath.join(outside, "secret.txt"), "utf8"), outsideValue)
    assert.isFalse(NodeFs.existsSync(NodePath.join(base, "escaped.txt")))
    await mcp.call("workspace.delete", { name: "r1", idempotency_key: "r9" })
  })

  it("client roots narrow the operator's; a roots change takes effect for the next call", async () => {
    let clientRoots = [NodePath.join(root, "sub")]
    const mcp = await server({ args: ["--host-root", root], roots: () => clientRoots })
    await mcp.call("workspace.create", { image: target.image, name: "c1", idempotency_key: "k0" })
    const cp = (dir: string, key: string) =>
      mcp.call("workspace.cp", {
        source: NodePath.join(root, dir, "in.txt"),
        target: "c1:/tmp/in.txt",
        idempotency_key: key
      })
    passed(await cp("sub", "k1"), "in the client's root")
    denied(await cp("other", "k2"), "in the operator's root only")
    denied(await cp(".", "k3"), "the operator's root itself, above the client's")
    const described = await mcp.call("microagent.describe")
    assert.isTrue(described.result.hostAccess.clientDeclaresRoots)
    assert.deepStrictEqual(described.result.hostAccess.effectiveRoots, [NodePath.join(root, "sub")])

    clientRoots = [NodePath.join(root, "other")]
    await mcp.client.sendRootsListChanged()
    // The notification is handled before the next request on the same stream; a denial is not replayed.
    passed(await cp("other", "k2"), "after the change, with the key of the denied call")
    denied(await cp("sub", "k5"), "no longer a client root")

    clientRoots = [outside]
    await mcp.client.sendRootsListChanged()
    const none = await cp("other", "k6")
    denied(none, "no root in common")
    assert.include(none.error?.message ?? "", "client declared")
    await mcp.call("workspace.delete", { name: "c1", idempotency_key: "k9" })
  })

  it("refuses to start with a root that does not exist or a malformed grant", () => {
    for (
      const [args, says] of [
        [["--host-root", NodePath.join(base, "nope")], "does not exist"],
        [["--host-root", NodePath.join(root, "in.txt")], "not a directory"],
        [["--allow-secret", "not a name"], "--allow-secret"],
        [["--allow-secret-env", "A.B"], "--allow-secret-env"]
      ] as const
    ) {
      const started = spawnSync(process.execPath, [
        binPath,
        "serve",
        "mcp",
        "--backend",
        target.backend,
        ...args
      ], {
        env: { ...process.env, MICROAGENT_HOME: stateDir },
        input: "",
        encoding: "utf8"
      })
      assert.strictEqual(started.status, 2, `${args.join(" ")}: ${started.stderr}`)
      assert.include(started.stderr, says, args.join(" "))
    }
  })

  it("MICROAGENT_MCP_HOST_ROOTS grants roots like --host-root", async () => {
    const mcp = await server({
      env: {
        MICROAGENT_MCP_HOST_ROOTS: [NodePath.join(root, "sub"), NodePath.join(root, "other")].join(
          NodePath.delimiter
        )
      }
    })
    const described = await mcp.call("microagent.describe")
    assert.deepStrictEqual(described.result.hostAccess.effectiveRoots, [
      NodePath.join(root, "other"),
      NodePath.join(root, "sub")
    ])
  })

  it("secrets: only what the operator allowed; a refused one's value appears nowhere", async () => {
    const mcp = await server({
      args: [
        "--host-root",
        root,
        "--allow-secret",
        "TOKEN",
        "--allow-secret",
        "BOUND=env:BOUND_SOURCE",
        "--allow-secret-env",
        "APP_*"
      ],
      env: { TOKEN: "token-value", BOUND_SOURCE: "bound-value", APP_KEY: "app-value" }
    })
    const described = await mcp.call("microagent.describe")
    assert.deepStrictEqual(described.result.hostAccess.boundSecrets, [{
      name: "BOUND",
      ref: "env:BOUND_SOURCE"
    }])
    assert.deepStrictEqual(described.result.hostAccess.allowedEnv, ["TOKEN", "APP_*"])
    let n = 0
    const create = (secrets: Array<string>) =>
      mcp.call("workspace.create", {
        image: target.image,
        name: `s${n}`,
        secrets,
        idempotency_key: `s${n++}`
      })
    for (
      const allowed of [
        ["TOKEN"],
        ["OTHER=env:TOKEN"],
        ["BOUND"],
        ["BOUND=env:BOUND_SOURCE"],
        ["K=env:APP_KEY"],
        [`F=file:${NodePath.join(root, "token.txt")}`],
        [`G=dotenv:${NodePath.join(root, "sub", "..", "app.env")}:X`],
        ["TOKEN", "K=env:APP_KEY", `F=file:${NodePath.join(root, "token.txt")}`]
      ]
    ) {
      const made = await create(allowed)
      assert.isTrue(made.ok, `${allowed.join(" ")}: ${JSON.stringify(made.error)}`)
    }
    const refusals: Array<[Array<string>, string]> = [
      [["H=env:HIDDEN"], "H=env:HIDDEN"],
      [["HIDDEN"], "HIDDEN"],
      [["BOUND=env:HIDDEN"], "BOUND=env:HIDDEN"],
      [["X=env:APPKEY"], "X=env:APPKEY"],
      [[`S=file:${NodePath.join(outside, "secret.txt")}`], "S=file:"],
      [[`S=file:${NodePath.join(root, "f")}`], "S=file:"],
      [[`S=file:${NodePath.join(root, "link", "secret.txt")}`], "S=file:"],
      [[`S=dotenv:${NodePath.join(outside, ".env")}:KEY`], "S=dotenv:"],
      [["TOKEN", "H=env:HIDDEN"], "H=env:HIDDEN"]
    ]
    for (const [secrets, named] of refusals) {
      const refused = await create(secrets)
      denied(refused, secrets.join(" "))
      assert.include(refused.error?.message ?? "", named)
      const text = JSON.stringify(refused)
      assert.notInclude(text, hiddenValue)
      assert.notInclude(text, outsideValue)
    }
    assert.notInclude(mcp.stderr(), hiddenValue)
    assert.notInclude(mcp.stderr(), outsideValue)
    // Refused creates made nothing; a start re-checks what the workspace records.
    const listed = await mcp.call("workspace.list")
    assert.strictEqual(
      listed.result.workspaces.filter((w: { name: string }) => w.name.startsWith("s")).length,
      8
    )
    const started = await mcp.call("workspace.start", {
      name: "s1",
      secrets: ["H=env:HIDDEN"],
      idempotency_key: "st"
    })
    denied(started, "a start adding a refused secret")
    assert.notInclude(JSON.stringify(started), hiddenValue)
    for (let i = 0; i < n; i++) {
      await mcp.call("workspace.delete", { name: `s${i}`, force: true, idempotency_key: `d${i}` })
    }
  })
})

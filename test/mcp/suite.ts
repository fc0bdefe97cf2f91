/**
 * The MCP server's tests, driven by the official MCP SDK client over stdio as an agent host runs it.
 * The target (backend, image, state setup) is a parameter: the fast tier runs them on the fake backend,
 * the real-VM tier on QEMU.
 */
import { Ajv } from "ajv"
import { spawn } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeHttp from "node:http"
import type * as NodeNet from "node:net"
import * as NodePath from "node:path"
import { afterAll, afterEach, assert, beforeAll, beforeEach, describe, it } from "vitest"
import { startRegistry } from "../support/registry.ts"
import {
  binPath,
  connect,
  type Connected,
  makeStateDir,
  removeStateDir,
  runtimeEnv,
  type TestTarget
} from "./mcpClient.ts"

const expectedTools = [
  "workspace.run",
  "workspace.dispatch",
  "workspace.create",
  "workspace.start",
  "workspace.exec",
  "workspace.halt",
  "workspace.kill",
  "workspace.fork",
  "workspace.pause",
  "workspace.quarantine",
  "workspace.resume",
  "workspace.delete",
  "workspace.inspect",
  "workspace.list",
  "workspace.logs",
  "workspace.events",
  "workspace.wait",
  "workspace.result",
  "workspace.apply",
  "workspace.egress",
  "microagent.profiles",
  "microagent.describe",
  "workspace.cp",
  "artifacts.list",
  "artifacts.get",
  "network.create",
  "network.list",
  "network.inspect",
  "network.delete",
  "volume.create",
  "volume.list",
  "volume.inspect",
  "volume.resize",
  "volume.delete",
  "snapshot.create",
  "workspace.clone",
  "snapshot.list",
  "snapshot.delete",
  "templates.list",
  "templates.prune",
  "workspace.commit",
  "images.pull",
  "images.list",
  "images.inspect",
  "images.delete",
  "images.tag",
  "images.prune",
  "images.push",
  "registry.list",
  "microagent.ping",
  "cp",
  "profiles.list",
  "host.inspect",
  "kernel.list",
  "kernel.verify",
  "doctor.check",
  "state.check",
  "state.backup",
  "workspace.stats",
  "workspace.resize",
  "models.pull",
  "models.list",
  "models.inspect",
  "models.remove",
  "models.prune",
  "models.serve",
  "models.stop",
  "models.runners",
  "models.policy.validate",
  "models.policy.evaluate"
]

const ajv = new Ajv({ allErrors: true })

export const describeMcpServer = (target: TestTarget) => {
  const testBackend = target.backend
  const testImage = target.image

  describe(`serve mcp (${testBackend} backend)`, () => {
    let stateDir: string
    /** The one host directory the server grants (`--host-root`). */
    let hostRoot: string
    let mcp: Connected

    beforeEach(async () => {
      stateDir = await makeStateDir(target)
      hostRoot = NodeFs.mkdtempSync(NodePath.join(NodePath.dirname(stateDir), "mcp-root-"))
      mcp = await connect(stateDir, target, { args: ["--host-root", hostRoot] })
    })
    afterEach(async () => {
      await mcp.close()
      assert.deepStrictEqual(
        mcp.transportErrors.map(String),
        [],
        "the server wrote something that is not protocol"
      )
      await removeStateDir(stateDir)
      NodeFs.rmSync(hostRoot, { recursive: true, force: true })
    })

    it("lists every tool, each with a valid JSON Schema object as input", async () => {
      const { tools } = await mcp.client.listTools()
      assert.deepStrictEqual(tools.map((t) => t.name).sort(), [...expectedTools].sort())
      for (const tool of tools) {
        assert.strictEqual(tool.inputSchema.type, "object", tool.name)
        assert.isString(tool.description, tool.name)
        // Compiling it is the check: ajv refuses anything that is not a valid schema.
        ajv.compile(tool.inputSchema)
        const mutating = !tool.annotations?.readOnlyHint
        assert.strictEqual("idempotency_key" in (tool.inputSchema.properties ?? {}), mutating, tool.name)
        assert.strictEqual(
          "preview" in (tool.inputSchema.properties ?? {}),
          tool.annotations?.destructiveHint === true,
          tool.name
        )
      }
      const described = await mcp.call("microagent.describe")
      assert.isTrue(described.ok)
      const operations = described.result.operations as Array<Record<string, any>>
      assert.deepStrictEqual(operations.map((o) => o.name).sort(), [...expectedTools].sort())
      for (const operation of operations) {
        ajv.compile(operation.inputSchema)
        ajv.compile(operation.outputSchema)
        assert.isArray(operation.sideEffects)
        assert.include(["read_only", "keyed_replay"], operation.idempotency)
        assert.include(["host_compute_and_storage", "host_io", "metadata"], operation.costClass)
      }
      ajv.compile(described.result.envelope)
    })

    it("drives a workspace: create, start, exec, inspect, delete", async () => {
      const created = await mcp.call("workspace.create", {
        image: testImage,
        name: "m1",
        env: { WHO: "mcp" },
        entrypoint: 'echo "agent $WHO"; exit 2',
        service: "sleep 100000",
        shell: "/bin/sh",
        health: { exec: ["true"], intervalSeconds: 1 }
      })
      assert.isTrue(created.ok, JSON.stringify(created.error))
      assert.strictEqual(created.result.name, "m1")
      assert.strictEqual(created.result.service, "sleep 100000")
      assert.strictEqual(created.result.shell, "/bin/sh")
      assert.deepStrictEqual(created.result.health, {
        exec: ["true"],
        intervalSeconds: 1,
        timeoutSeconds: 5,
        retries: 3,
        startPeriodSeconds: 0
      })
      const noPort = await mcp.call("workspace.create", {
        image: testImage,
        name: "m0",
        health: { httpGet: "/" }
      })
      assert.strictEqual(noPort.error?.kind, "permanent", JSON.stringify(noPort))
      assert.include(noPort.error?.message, "health.port")
      assert.strictEqual(created.result.state, "prepared")
      assert.strictEqual(created.result.backend, testBackend)
      assert.strictEqual(created.meta.tool, "workspace.create")
      assert.isNumber(created.meta.durationMs)
      const started = await mcp.call("workspace.start", { name: "m1" })
      assert.strictEqual(started.result.state, "running")
      const agent = await mcp.call("workspace.result", { name: "m1", wait: true, timeout_seconds: 60 })
      assert.isTrue(agent.ok, JSON.stringify(agent.error))
      assert.strictEqual(agent.result.status, "exited")
      assert.strictEqual(agent.result.exitCode, 2)
      assert.strictEqual(agent.result.stdout, "agent mcp\n")
      const ran = await mcp.call("workspace.exec", {
        name: "m1",
        argv: ["sh", "-c", 'read x; echo "$x $WHO"; exit 5'],
        stdin: "hello\n"
      })
      assert.isTrue(ran.ok, "a non-zero exit is a result, not an error")
      assert.strictEqual(ran.result.exitCode, 5)
      assert.strictEqual(ran.result.stdout, "hello mcp\n")
      const inspected = await mcp.call("workspace.inspect", { name: "m1" })
      assert.strictEqual(inspected.result.workspace.state, "running")
      const sample = await mcp.call("workspace.stats", { name: "m1", interval_seconds: 0.1 })
      assert.isTrue(sample.ok, JSON.stringify(sample.error))
      assert.strictEqual(sample.result.workspace, "m1")
      assert.isAbove(sample.result.pid, 0)
      assert.isAbove(sample.result.memoryBytes, 0)
      const plan = await mcp.call("workspace.resize", { name: "m1", size_mib: 512, preview: true })
      assert.strictEqual(plan.result.wouldFail?.kind, "conflict", JSON.stringify(plan))
      const resized = await mcp.call("workspace.resize", { name: "m1", size_mib: 512 })
      assert.strictEqual(resized.error?.kind, "conflict", "a running workspace's disk is resized offline")
      const listed = await mcp.call("workspace.list")
      assert.deepStrictEqual(listed.result.workspaces.map((w: { name: string }) => w.name), ["m1"])
      const events = await mcp.call("workspace.events", { name: "m1" })
      assert.includeMembers(events.result.events.map((e: { type: string }) => e.type), [
        "created",
        "service",
        "entrypoint",
        "exec"
      ])
      const newer = await mcp.call("workspace.events", { name: "m1", after_id: events.result.nextAfterId })
      assert.deepStrictEqual(newer.result.events, [])
      const logs = await mcp.call("workspace.logs", { name: "m1", tail_lines: 1 })
      assert.isTrue(logs.ok)
      const refused = await mcp.call("workspace.delete", { name: "m1" })
      assert.isFalse(refused.ok)
      assert.strictEqual(refused.error?.kind, "conflict")
      const deleted = await mcp.call("workspace.delete", { name: "m1", force: true })
      assert.deepStrictEqual(deleted.result, { workspace: "m1", deleted: true })
      const missing = await mcp.call("workspace.inspect", { name: "m1" })
      assert.strictEqual(missing.error?.kind, "not_found")
      assert.isFalse(missing.error?.retryable)
    })

    it("plans a run without booting (dry_run), and applies a spec's fields to a workspace", async () => {
      const planned = await mcp.call("workspace.run", {
        image: testImage,
        name: "dry",
        command: ["echo", "hi"],
        setup: ["echo prepare"],
        publish: ["8089:80"],
        dry_run: true
      })
      assert.isTrue(planned.ok, JSON.stringify(planned.error))
      assert.deepInclude(planned.result, {
        kind: "run",
        name: "dry",
        backend: testBackend,
        setup: ["echo prepare"],
        command: ["echo", "hi"]
      })
      assert.strictEqual(planned.result.image.ref, testImage)
      assert.deepStrictEqual(planned.result.network.ports.map((p: { hostPort: number }) => p.hostPort), [
        8089
      ])
      assert.strictEqual((await mcp.call("workspace.inspect", { name: "dry" })).error?.kind, "not_found")

      const created = await mcp.call("workspace.create", {
        image: testImage,
        name: "ap",
        entrypoint: "echo one"
      })
      assert.isTrue(created.ok, JSON.stringify(created.error))
      const preview = await mcp.call("workspace.apply", { name: "ap", entrypoint: "echo two", dry_run: true })
      assert.deepStrictEqual(preview.result.changes, [
        { field: "entrypoint", from: "echo one", to: "echo two", effect: "next start" }
      ])
      assert.strictEqual(
        (await mcp.call("workspace.inspect", { name: "ap" })).result.workspace.entrypoint,
        "echo one"
      )
      const applied = await mcp.call("workspace.apply", {
        name: "ap",
        entrypoint: "echo two",
        restart: "always"
      })
      assert.isTrue(applied.ok, JSON.stringify(applied.error))
      assert.deepStrictEqual(applied.result.changes.map((c: { field: string }) => c.field), [
        "restart",
        "entrypoint"
      ])
      const record = (await mcp.call("workspace.inspect", { name: "ap" })).result.workspace
      assert.deepInclude(record, { entrypoint: "echo two", restart: "always" })
      const again = await mcp.call("workspace.apply", { name: "ap", entrypoint: "echo two" })
      assert.deepInclude(again.result, { changed: false, changes: [] })
      const refused = await mcp.call("workspace.apply", {
        name: "ap",
        image: "other:1",
        entrypoint: "echo three"
      })
      assert.strictEqual(refused.error?.kind, "conflict")
      assert.include(refused.error?.message, "image")
      assert.strictEqual(
        (await mcp.call("workspace.inspect", { name: "ap" })).result.workspace.entrypoint,
        "echo two"
      )
      await mcp.call("workspace.delete", { name: "ap", force: true })
    })

    it("replays a repeated idempotent call, across a restart too, and refuses the key with other arguments", async () => {
      const args = { image: testImage, name: "idem", idempotency_key: "create-idem-1" }
      const first = await mcp.call("workspace.create", args)
      assert.isTrue(first.ok)
      assert.isUndefined(first.meta.idempotencyReplay)
      const again = await mcp.call("workspace.create", args)
      assert.isTrue(again.ok, "a replay, not a name conflict")
      assert.isTrue(again.meta.idempotencyReplay)
      assert.deepStrictEqual(again.result, first.result)
      const listed = await mcp.call("workspace.list")
      assert.strictEqual(listed.result.workspaces.length, 1)
      const other = await mcp.call("workspace.create", { ...args, profile: "large" })
      assert.isFalse(other.ok)
      assert.strictEqual(other.error?.kind, "conflict")
      assert.include(other.error?.message ?? "", "idempotency_key")
      // The keys are in the state store: a new server process replays the same result.
      await mcp.close()
      mcp = await connect(stateDir, target, { args: ["--host-root", hostRoot] })
      const afterRestart = await mcp.call("workspace.create", args)
      assert.isTrue(afterRestart.meta.idempotencyReplay)
      assert.deepStrictEqual(afterRestart.result, first.result)
      // A keyed exec runs once.
      await mcp.call("workspace.start", { name: "idem" })
      const exec = {
        name: "idem",
        argv: ["sh", "-c", "echo x >> tmp/count; wc -l < tmp/count"],
        idempotency_key: "e1"
      }
      const once = await mcp.call("workspace.exec", exec)
      const twice = await mcp.call("workspace.exec", exec)
      assert.strictEqual(once.result.stdout.trim(), "1")
      assert.strictEqual(twice.result.stdout.trim(), "1")
      assert.isTrue(twice.meta.idempotencyReplay)
      await mcp.call("workspace.delete", { name: "idem", force: true })
    })

    it("answers invalid arguments with a structured error and stays up", async () => {
      const wrongType = await mcp.call("workspace.exec", { name: "x", argv: "echo hi" })
      assert.isFalse(wrongType.ok)
      assert.strictEqual(wrongType.error?.kind, "permanent")
      assert.isTrue(wrongType.error?.usage)
      assert.isFalse(wrongType.error?.retryable)
      assert.include(wrongType.error?.message ?? "", "argv")
      assert.isString(wrongType.error?.remediation)
      const unknown = await mcp.call("workspace.create", { image: testImage, state_dir: "/tmp" })
      assert.isFalse(unknown.ok)
      assert.include(unknown.error?.message ?? "", "state_dir")
      const badName = await mcp.call("workspace.create", { image: testImage, name: "no/slashes" })
      assert.isFalse(badName.ok)
      assert.strictEqual(badName.error?.kind, "permanent")
      // An agent may not commit over a name others pull, unless it says so; nor to another architecture.
      const shadow = await mcp.call("workspace.commit", { name: "x", image: "docker.io/library/alpine:3" })
      assert.strictEqual(shadow.error?.kind, "policy_denied", JSON.stringify(shadow))
      assert.include(shadow.error?.remediation ?? "", "allow_registry_shadow")
      const arch = await mcp.call("workspace.commit", { name: "x", image: "local/app:1", arch: "riscv64" })
      assert.strictEqual(arch.error?.kind, "unsupported", JSON.stringify(arch))
      const absent = await mcp.call("workspace.commit", {
        name: "no-such-workspace",
        image: "registry.example/app:1",
        allow_registry_shadow: true
      })
      assert.strictEqual(absent.error?.kind, "not_found", JSON.stringify(absent))
      const missing = await mcp.call("workspace.start", {})
      assert.include(missing.error?.message ?? "", "name")
      // Still serving.
      const profiles = await mcp.call("microagent.profiles")
      assert.isTrue(profiles.ok)
      assert.deepStrictEqual(Object.keys(profiles.result.profiles).sort(), [
        "large",
        "medium",
        "small",
        "tiny"
      ])
    })

    it("pulls, lists, inspects and deletes an image; lists and verifies kernels; checks the host", async () => {
      const builtin = "microagent.local/busybox:latest"
      const pulled = await mcp.call("images.pull", { image: builtin, idempotency_key: "pull-1" })
      assert.isTrue(pulled.ok, JSON.stringify(pulled.error))
      assert.strictEqual(pulled.result.ref, builtin)
      assert.match(pulled.result.digest, /^sha256:[0-9a-f]{64}$/)
      assert.isAbove(pulled.result.sizeBytes, 0)
      const listed = await mcp.call("images.list")
      assert.include(listed.result.images.map((i: { ref: string }) => i.ref), builtin)
      const byDigest = await mcp.call("images.inspect", { image: pulled.result.digest.slice(7, 23) })
      assert.isTrue(byDigest.ok, JSON.stringify(byDigest.error))
      assert.strictEqual(byDigest.result.image.ref, builtin)
      assert.isAbove(byDigest.result.layers.length, 0)
      const badRef = await mcp.call("images.pull", { image: "UPPER/Case::x", idempotency_key: "pull-2" })
      assert.isFalse(badRef.ok)
      assert.strictEqual(badRef.error?.kind, "permanent")
      assert.isString(badRef.error?.remediation)

      const preview = await mcp.call("images.delete", { image: builtin, delete_files: true, preview: true })
      assert.isTrue(preview.ok, JSON.stringify(preview.error))
      assert.strictEqual(preview.result.target, builtin)
      assert.isAbove(preview.result.actions.length, 0)
      const still = await mcp.call("images.list")
      assert.include(
        still.result.images.map((i: { ref: string }) => i.ref),
        builtin,
        "a preview changes nothing"
      )
      const deleted = await mcp.call("images.delete", {
        image: builtin,
        delete_files: true,
        idempotency_key: "rm-1"
      })
      assert.isTrue(deleted.ok, JSON.stringify(deleted.error))
      assert.include(deleted.result.removed, builtin)
      const after = await mcp.call("images.list")
      assert.notInclude(after.result.images.map((i: { ref: string }) => i.ref), builtin)
      const gone = await mcp.call("images.inspect", { image: builtin })
      assert.strictEqual(gone.error?.kind, "not_found")
      const ghostPreview = await mcp.call("images.delete", { image: builtin, preview: true })
      assert.strictEqual(ghostPreview.result.wouldFail?.kind, "not_found")

      if (testBackend === "qemu") {
        // A boot installs the default kernel into this fresh state directory's cache.
        const booted = await mcp.call("workspace.run", {
          image: testImage,
          command: ["true"],
          idempotency_key: "boot-1"
        })
        assert.isTrue(booted.ok, JSON.stringify(booted.error))
      }
      const kernels = await mcp.call("kernel.list")
      assert.isTrue(kernels.ok, JSON.stringify(kernels.error))
      assert.isArray(kernels.result.kernels)
      if (testBackend === "qemu") {
        // The real tier boots a cached kernel, so the cache has one, and it verifies.
        assert.isAbove(kernels.result.kernels.length, 0)
        assert.match(kernels.result.kernels[0].sha256, /^[0-9a-f]{64}$/)
        const verified = await mcp.call("kernel.verify")
        assert.isTrue(verified.result.ok, JSON.stringify(verified.result.files.filter((f: any) => !f.ok)))
        assert.isAbove(verified.result.files.length, 0)
      }
      const doctor = await mcp.call("doctor.check")
      assert.isTrue(doctor.ok, JSON.stringify(doctor.error))
      const names = doctor.result.checks.map((c: { name: string }) => c.name)
      assert.includeMembers(names, ["qemu", "mke2fs", "acceleration"])
      for (const check of doctor.result.checks) {
        if (!check.ok) assert.isString(check.remediation, `${check.name} says how to install what is missing`)
      }
      assert.isTrue(doctor.result.checks.find((c: { name: string }) => c.name === "state").ok)
    })

    it("checks and backs up the state database", async () => {
      const backup = await mcp.call("state.backup", { idempotency_key: "b1" })
      assert.isTrue(backup.ok, JSON.stringify(backup.error))
      assert.strictEqual(NodeFs.statSync(backup.result.path).mode & 0o777, 0o600)
      assert.strictEqual(NodePath.dirname(backup.result.path), NodePath.join(stateDir, "backups"))
      const check = await mcp.call("state.check")
      assert.isTrue(check.ok, JSON.stringify(check.error))
      assert.isTrue(check.result.ok)
      assert.strictEqual(check.result.database, NodePath.join(stateDir, "state.db"))
      assert.include(check.result.backups.map((b: { path: string }) => b.path), backup.result.path)
    })

    it("manages volumes and networks, and parses ports, mounts and secrets as the CLI does", async () => {
      const made = await mcp.call("volume.create", { name: "mcpdata", size_mib: 32, idempotency_key: "v1" })
      assert.isTrue(made.ok, JSON.stringify(made.error))
      assert.strictEqual(made.result.sizeMiB, 32)
      const volumes = await mcp.call("volume.list")
      assert.deepStrictEqual(volumes.result.volumes.map((v: { name: string }) => v.name), ["mcpdata"])
      const grown = await mcp.call("volume.resize", { name: "mcpdata", size_mib: 48, idempotency_key: "v2" })
      assert.strictEqual(grown.result.sizeMiB, 48)
      const slash = await mcp.call("volume.create", { name: "a/b", idempotency_key: "v3" })
      assert.isFalse(slash.ok)
      assert.include(slash.error?.message ?? "", "a/b")

      const net = await mcp.call("network.create", {
        name: "mcpnet",
        subnet: "10.93.0.0/24",
        idempotency_key: "n1"
      })
      assert.isTrue(net.ok, JSON.stringify(net.error))
      assert.strictEqual(net.result.gateway, "10.93.0.1")
      const overlap = await mcp.call("network.create", {
        name: "other",
        subnet: "10.93.0.0/25",
        idempotency_key: "n2"
      })
      assert.strictEqual(overlap.error?.kind, "conflict")
      const inspected = await mcp.call("network.inspect", { name: "mcpnet" })
      assert.deepStrictEqual(inspected.result.members, [])

      // Malformed ports, mounts and secrets are refused before anything is created.
      for (
        const bad of [
          { publish: ["8080:80/udp"] },
          { publish: ["70000:80"] },
          { volumes: ["mcpdata:relative/path"] },
          { volumes: ["/etc:/etc"] },
          { secrets: ["TOKEN=env:MICROAGENT_TEST_UNSET_VARIABLE"] },
          { secrets: ["TOKEN=vault:x"] },
          { brokers: ["secret=A=env:B"] },
          // Broker references and CA bundles pass the same host-access checks as secrets.
          { brokers: ["upstream=https://h;secret=K=file:/etc/shadow"] },
          { brokers: ["upstream=https://h;ca=/etc/ssl/certs/ca-certificates.crt"] },
          // So are grant files, before they are read.
          { brokers: ["upstream=https://h;assurance=semantic;grant=/etc/passwd"] }
        ]
      ) {
        const refused = await mcp.call("workspace.create", { image: testImage, name: "never", ...bad })
        assert.isFalse(refused.ok, JSON.stringify(bad))
        assert.isString(refused.error?.remediation)
      }
      const none = await mcp.call("workspace.list")
      assert.deepStrictEqual(none.result.workspaces, [], "nothing was created by a refused call")

      // A workspace with broker endpoints records them and their references, never a value.
      const keyFile = NodePath.join(hostRoot, "broker-key")
      NodeFs.writeFileSync(keyFile, "k3y", { mode: 0o600 })
      const brokered = await mcp.call("workspace.create", {
        image: testImage,
        name: "brokered",
        brokers: [`upstream=https://api.example.com;secret=KEY=file:${keyFile};base-url-env=API_URL`],
        idempotency_key: "b1"
      })
      assert.isTrue(brokered.ok, JSON.stringify(brokered.error))
      const record = (await mcp.call("workspace.inspect", { name: "brokered" })).result.workspace
      assert.deepStrictEqual(record.brokers.map((b: { upstream: string }) => b.upstream), [
        "https://api.example.com"
      ])
      assert.deepStrictEqual(record.secrets, [{ name: "KEY", source: `file:${keyFile}`, use: "broker" }])
      assert.strictEqual(record.env.API_URL, "http://127.0.0.1:18888")
      assert.isTrue((await mcp.call("workspace.delete", { name: "brokered", idempotency_key: "b2" })).ok)
      // A semantic endpoint carries its grant, read from a file under the granted root.
      const grantFile = NodePath.join(hostRoot, "grant.yaml")
      NodeFs.writeFileSync(
        grantFile,
        "operations: [{name: models, effect: read, method: GET, route: /v1/models}]\n"
      )
      const semantic = await mcp.call("workspace.create", {
        image: testImage,
        name: "semantic",
        brokers: [
          `upstream=https://api.example.com;secret=KEY=file:${keyFile};assurance=semantic;grant=${grantFile}`
        ],
        idempotency_key: "b3"
      })
      assert.isTrue(semantic.ok, JSON.stringify(semantic.error))
      const [endpoint] = (await mcp.call("workspace.inspect", { name: "semantic" })).result.workspace.brokers
      assert.strictEqual(endpoint.assurance, "semantic")
      assert.deepStrictEqual(endpoint.grant.operations.map((o: { name: string }) => o.name), ["models"])
      assert.isTrue((await mcp.call("workspace.delete", { name: "semantic", idempotency_key: "b4" })).ok)
      NodeFs.rmSync(grantFile)
      NodeFs.rmSync(keyFile)

      const previewVolume = await mcp.call("volume.delete", { name: "mcpdata", preview: true })
      assert.deepStrictEqual(previewVolume.result.target, "mcpdata")
      assert.lengthOf(previewVolume.result.actions, 1)
      const previewNetwork = await mcp.call("network.delete", { name: "mcpnet", preview: true })
      assert.lengthOf(previewNetwork.result.actions, 1)
      const ghost = await mcp.call("volume.delete", { name: "ghost", preview: true })
      assert.strictEqual(ghost.result.wouldFail?.kind, "not_found")
      assert.isTrue((await mcp.call("volume.inspect", { name: "mcpdata" })).ok, "a preview changes nothing")

      if (testBackend === "qemu") {
        // Through MCP alone: a secret resolved by the server, a volume written by one run and read by the next.
        const secretFile = NodePath.join(hostRoot, "mcp-secret")
        NodeFs.writeFileSync(secretFile, "s3cr3t-from-mcp", { mode: 0o600 })
        try {
          const wrote = await mcp.call("workspace.run", {
            image: testImage,
            command: ["sh", "-c", "cat /run/secrets/TOKEN > /data/copy && cat /data/copy"],
            volumes: ["mcpdata:/data"],
            secrets: [`TOKEN=file:${secretFile}`],
            idempotency_key: "r1"
          })
          assert.isTrue(wrote.ok, JSON.stringify(wrote.error))
          assert.strictEqual(wrote.result.result.stdout, "s3cr3t-from-mcp")
          const read = await mcp.call("workspace.run", {
            image: testImage,
            command: ["cat", "/data/copy"],
            volumes: ["mcpdata:/data:ro"],
            idempotency_key: "r2"
          })
          assert.strictEqual(read.result.result.stdout, "s3cr3t-from-mcp")

          // The same secret held by a credential broker: the upstream gets it, the guest does not.
          const seen: Array<string | undefined> = []
          const upstream = NodeHttp.createServer((request, response) => {
            seen.push(request.headers.authorization)
            response.end("pong")
          })
          await new Promise<void>((resolve) => upstream.listen(0, "127.0.0.1", resolve))
          try {
            const port = (upstream.address() as NodeNet.AddressInfo).port
            const brokered = await mcp.call("workspace.run", {
              image: testImage,
              command: [
                "sh",
                "-c",
                `wget -q -O - --header 'Authorization: @secret:TOKEN' "$API/ping"; ls /run/secrets 2>&1`
              ],
              brokers: [`upstream=http://127.0.0.1:${port};secret=TOKEN=file:${secretFile};base-url-env=API`],
              idempotency_key: "r3"
            })
            assert.isTrue(brokered.ok, JSON.stringify(brokered.error))
            assert.strictEqual(
              brokered.result.result.stdout,
              "pongls: /run/secrets: No such file or directory\n"
            )
            assert.deepStrictEqual(seen, ["s3cr3t-from-mcp"])
          } finally {
            upstream.close()
          }
        } finally {
          NodeFs.rmSync(secretFile, { force: true })
        }
      }

      const removed = await mcp.call("volume.delete", { name: "mcpdata", idempotency_key: "v4" })
      assert.deepStrictEqual(removed.result, { volume: "mcpdata", removed: true })
      const netRemoved = await mcp.call("network.delete", { name: "mcpnet", idempotency_key: "n3" })
      assert.deepStrictEqual(netRemoved.result, { network: "mcpnet", removed: true })
      assert.deepStrictEqual((await mcp.call("network.list")).result.networks, [])
    })

    it("copies files and fetches declared outputs", async () => {
      const scratch = NodeFs.mkdtempSync(NodePath.join(hostRoot, "mcp-files-"))
      try {
        const relative = await mcp.call("workspace.cp", {
          source: NodePath.join(scratch, "x"),
          target: "w:relative/path",
          idempotency_key: "c0"
        })
        assert.isFalse(relative.ok)
        assert.strictEqual(relative.error?.kind, "permanent")
        const both = await mcp.call("workspace.cp", { source: "a:/x", target: "b:/y", idempotency_key: "c1" })
        assert.isFalse(both.ok)
        if (testBackend !== "qemu") {
          // The fake backend's disk is a host directory: copies go in and out of it, never to host paths.
          await mcp.call("workspace.create", { image: testImage, name: "f1", idempotency_key: "c2" })
          NodeFs.writeFileSync(NodePath.join(scratch, "in.txt"), "hello")
          const copied = await mcp.call("workspace.cp", {
            source: NodePath.join(scratch, "in.txt"),
            target: "f1:/tmp/in.txt",
            idempotency_key: "c3"
          })
          assert.isTrue(copied.ok, JSON.stringify(copied.error))
          const back = await mcp.call("workspace.cp", {
            source: "f1:/tmp/in.txt",
            target: NodePath.join(scratch, "back.txt"),
            idempotency_key: "c3b"
          })
          assert.isTrue(back.ok, JSON.stringify(back.error))
          assert.strictEqual(NodeFs.readFileSync(NodePath.join(scratch, "back.txt"), "utf8"), "hello")
          await mcp.call("workspace.delete", { name: "f1", idempotency_key: "c4" })
          return
        }
        NodeFs.writeFileSync(NodePath.join(scratch, "in.txt"), "hello from the host\n", { mode: 0o640 })
        const created = await mcp.call("workspace.create", {
          image: testImage,
          name: "f1",
          idempotency_key: "c2"
        })
        assert.isTrue(created.ok, JSON.stringify(created.error))
        // Prepared: written offline on its disk.
        const offline = await mcp.call("workspace.cp", {
          source: NodePath.join(scratch, "in.txt"),
          target: "f1:/root/in.txt",
          idempotency_key: "c3"
        })
        assert.isTrue(offline.ok, JSON.stringify(offline.error))
        await mcp.call("workspace.start", { name: "f1", idempotency_key: "c5" })
        const seen = await mcp.call("workspace.exec", {
          name: "f1",
          argv: ["sh", "-c", "cat /root/in.txt; stat -c %a /root/in.txt; echo made > /root/out.txt"],
          idempotency_key: "c6"
        })
        assert.strictEqual(seen.result.stdout, "hello from the host\n640\n")
        const out = await mcp.call("workspace.cp", {
          source: "f1:/root/out.txt",
          target: scratch,
          idempotency_key: "c7"
        })
        assert.isTrue(out.ok, JSON.stringify(out.error))
        assert.strictEqual(NodeFs.readFileSync(NodePath.join(scratch, "out.txt"), "utf8"), "made\n")
        await mcp.call("workspace.delete", { name: "f1", force: true, idempotency_key: "c8" })

        const ran = await mcp.call("workspace.run", {
          image: testImage,
          name: "withoutputs",
          command: ["sh", "-c", "mkdir -p /out && echo report > /out/report.txt"],
          outputs: ["report=/out/report.txt"],
          idempotency_key: "c9"
        })
        assert.isTrue(ran.ok, JSON.stringify(ran.error))
        const listed = await mcp.call("artifacts.list", { name: "withoutputs" })
        assert.isTrue(listed.ok, JSON.stringify(listed.error))
        assert.strictEqual(JSON.stringify(listed.result).includes("report"), true)
        const got = await mcp.call("artifacts.get", {
          name: "withoutputs",
          artifact: "report",
          target: NodePath.join(scratch, "report.txt"),
          idempotency_key: "c10"
        })
        assert.isTrue(got.ok, JSON.stringify(got.error))
        assert.strictEqual(NodeFs.readFileSync(NodePath.join(scratch, "report.txt"), "utf8"), "report\n")
      } finally {
        NodeFs.rmSync(scratch, { recursive: true, force: true })
      }
    })

    it("previews a destructive call without doing it", async () => {
      await mcp.call("workspace.create", { image: testImage, name: "p1" })
      await mcp.call("workspace.start", { name: "p1" })
      const previewDelete = await mcp.call("workspace.delete", { name: "p1", force: true, preview: true })
      assert.isTrue(previewDelete.ok)
      assert.isTrue(previewDelete.meta.preview)
      assert.strictEqual(previewDelete.result.state, "running")
      assert.lengthOf(previewDelete.result.actions, 2)
      const refusedPreview = await mcp.call("workspace.delete", { name: "p1", preview: true })
      assert.strictEqual(refusedPreview.result.wouldFail.kind, "conflict")
      const previewKill = await mcp.call("workspace.kill", { name: "p1", preview: true })
      assert.isAbove(previewKill.result.actions.length, 0)
      const previewHalt = await mcp.call("workspace.halt", { name: "p1", preview: true })
      assert.isAbove(previewHalt.result.actions.length, 0)
      const still = await mcp.call("workspace.inspect", { name: "p1" })
      assert.strictEqual(still.result.workspace.state, "running", "nothing was done")
      const halted = await mcp.call("workspace.halt", { name: "p1" })
      assert.strictEqual(halted.result.state, "halted")
      const haltAgain = await mcp.call("workspace.halt", { name: "p1", preview: true })
      assert.strictEqual(haltAgain.result.wouldFail.kind, "conflict")
      const nothing = await mcp.call("workspace.delete", { name: "ghost", preview: true })
      assert.deepStrictEqual(nothing.result.actions, [])
      // A preview of a missing workspace fails as the call itself would: not_found, not conflict.
      for (const tool of ["workspace.halt", "workspace.kill"]) {
        const ghostPreview = await mcp.call(tool, { name: "ghost", preview: true })
        assert.strictEqual(ghostPreview.result.wouldFail.kind, "not_found", tool)
        const ghostCall = await mcp.call(tool, { name: "ghost" })
        assert.strictEqual(ghostCall.error?.kind, "not_found", tool)
      }
      await mcp.call("workspace.delete", { name: "p1" })
    })

    it("speaks the original's tool and argument names, principal and confirm_token", async () => {
      const ping = await mcp.call("microagent.ping", { principal: "agent-7" })
      assert.isTrue(ping.ok, JSON.stringify(ping.error))
      assert.isTrue(ping.result.ok)
      assert.strictEqual(ping.meta.principal, "agent-7")
      const profiles = await mcp.call("profiles.list")
      assert.deepStrictEqual(profiles.result, (await mcp.call("microagent.profiles")).result)
      assert.isTrue((await mcp.call("host.inspect")).ok)

      await mcp.call("workspace.create", { image: testImage, name: "c1", principal: "agent-7" })
      await mcp.call("workspace.start", { name: "c1" })
      const legacy = await mcp.call("workspace.exec", {
        name: "c1",
        command: "echo hello world; echo oops >&2",
        output_limit_bytes_stdout: 5,
        output_limit_bytes_stderr: 2,
        timeout_ms: 20_000
      })
      assert.isTrue(legacy.ok, JSON.stringify(legacy.error))
      assert.strictEqual(legacy.result.stdout, "hello")
      assert.isTrue(legacy.result.stdoutTruncated)
      assert.strictEqual(legacy.result.stderr, "oo")
      const slow = await mcp.call("workspace.exec", { name: "c1", command: ["sleep", "30"], timeout_ms: 500 })
      assert.strictEqual(slow.result.status, "timed_out")
      const both = await mcp.call("workspace.exec", { name: "c1", argv: ["true"], command: "true" })
      assert.strictEqual(both.error?.kind, "permanent")
      assert.include(both.error?.message, "give either command or argv")
      const badDuration = await mcp.call("workspace.wait", { name: "c1", timeout: "5x" })
      assert.strictEqual(badDuration.error?.kind, "permanent")
      assert.include(badDuration.error?.message, "timeout:")
      const waited = await mcp.call("workspace.wait", { name: "c1", timeout: "300ms", interval: "100ms" })
      assert.strictEqual(waited.error?.kind, "transient", "still running: waiting runs out of time")

      // A destructive call with a token is done only with the arguments that were previewed.
      const preview = await mcp.call("workspace.kill", { name: "c1", preview: true })
      assert.isString(preview.result.confirm_token)
      const wrong = await mcp.call("workspace.kill", {
        name: "c2",
        confirm_token: preview.result.confirm_token
      })
      assert.strictEqual(wrong.error?.kind, "conflict")
      assert.include(wrong.error?.message, "confirm_token")
      const forged = await mcp.call("workspace.kill", { name: "c1", confirm_token: "1.abc" })
      assert.strictEqual(forged.error?.kind, "conflict")
      assert.strictEqual(
        (await mcp.call("workspace.inspect", { name: "c1" })).result.workspace.state,
        "running"
      )
      const killed = await mcp.call("workspace.kill", {
        name: "c1",
        confirm_token: preview.result.confirm_token
      })
      assert.isTrue(killed.ok, JSON.stringify(killed.error))
      await mcp.call("workspace.delete", { name: "c1" })

      const builtin = "microagent.local/busybox:latest"
      await mcp.call("images.pull", { image: builtin, arch: "amd64" })
      const tagged = await mcp.call("images.tag", { source: builtin, target: "microagent.local/tagged:1" })
      assert.isTrue(tagged.ok, JSON.stringify(tagged.error))
      assert.strictEqual(tagged.result.ref, "microagent.local/tagged:1")
      const prunePreview = await mcp.call("images.prune", { preview: true })
      assert.isAbove(prunePreview.result.actions.length, 0)
      const pruned = await mcp.call("images.prune", {})
      assert.isTrue(pruned.ok, JSON.stringify(pruned.error))
      const listed = await mcp.call("images.list")
      assert.include(listed.result.images.map((i: { ref: string }) => i.ref), "microagent.local/tagged:1")

      // Push to a loopback registry; logins are listed (never with a password) but not managed over MCP.
      const registry = await startRegistry()
      try {
        const target = `${registry.host}/mcp/busybox:1`
        const pushed = await mcp.call("images.push", { image: builtin, to: target })
        assert.isTrue(pushed.ok, JSON.stringify(pushed.error))
        assert.strictEqual(pushed.result.ref, target)
        assert.strictEqual(pushed.result.digest, tagged.result.digest)
        assert.strictEqual(pushed.result.pushed.length, 3)
        const again = await mcp.call("images.push", { image: builtin, to: target })
        assert.deepStrictEqual(again.result.pushed, [])
        assert.strictEqual(again.result.skipped.length, 3)
      } finally {
        await registry.stop()
      }
      const logins = await mcp.call("registry.list")
      assert.isTrue(logins.ok, JSON.stringify(logins.error))
      assert.deepStrictEqual(
        logins.result.logins.filter((l: { source: string }) => l.source.startsWith(stateDir)),
        []
      )
      const names = (await mcp.client.listTools()).tools.map((t) => t.name)
      assert.notInclude(names, "registry.login")
      assert.notInclude(names, "registry.logout")
    })

    it("a cancelled call is interrupted: a cancelled run deletes its workspace", async () => {
      const controller = new AbortController()
      const running = mcp.client.callTool(
        { name: "workspace.run", arguments: { image: testImage, command: ["sleep", "100"] } },
        undefined,
        { signal: controller.signal, timeout: 60_000 }
      )
      const outcome = running.then(() => "answered", () => "rejected")
      const names = async () =>
        (await mcp.call("workspace.list")).result.workspaces.map((w: { name: string }) => w.name)
      const waitFor = async (done: (names: Array<string>) => boolean) => {
        for (let i = 0; i < 200; i++) {
          if (done(await names())) return true
          await new Promise((resolve) => setTimeout(resolve, 50))
        }
        return false
      }
      const started = await waitFor((all) => all.length === 1)
      assert.isTrue(started, "the run never created its workspace")
      // Give the run a moment to get to its command, then cancel.
      await mcp.call("workspace.wait", { name: (await names())[0], timeout_seconds: 0.5 })
      controller.abort()
      assert.strictEqual(await outcome, "rejected")
      assert.isTrue(await waitFor((all) => all.length === 0), "the cancelled run left its workspace")
    })

    it("runs a command in a fresh workspace and cleans up, using only what tools/list said", async () => {
      const { tools } = await mcp.client.listTools()
      const byName = new Map(tools.map((tool) => [tool.name, tool]))
      // Every call is checked against the schema the server advertised before it is made.
      const call = async (name: string, args: Record<string, unknown>) => {
        const tool = byName.get(name)
        assert.isDefined(tool, `tools/list has no ${name}`)
        const validate = ajv.compile(tool!.inputSchema)
        assert.isTrue(validate(args), `${name}: ${ajv.errorsText(validate.errors)}`)
        for (const required of tool!.inputSchema.required ?? []) assert.property(args, required)
        const envelope = await mcp.call(name, args)
        assert.isTrue(envelope.ok, `${name}: ${JSON.stringify(envelope.error)}`)
        return envelope.result
      }
      const create = byName.get("workspace.create")!
      // image, or from_snapshot: neither is required on its own.
      assert.deepStrictEqual(create.inputSchema.required ?? [], [])
      assert.containsAllKeys(create.inputSchema.properties ?? {}, ["image", "from_snapshot"])
      const workspace = await call("workspace.create", { image: testImage })
      const name = workspace.name as string
      await call("workspace.start", { name })
      const result = await call("workspace.exec", {
        name,
        argv: ["sh", "-c", "echo hello from $(hostname -s 2>/dev/null || echo guest)"]
      })
      assert.strictEqual(result.exitCode, 0)
      assert.match(result.stdout, /^hello from /)
      // Copies of the stopped workspace: a clone and one from its snapshot, each with its own hostname.
      await call("workspace.halt", { name })
      await call("snapshot.create", { name, tag: "t1" })
      const unknownTag = await mcp.call("workspace.start", { name, from_snapshot: "nope" })
      assert.strictEqual(unknownTag.error?.kind, "not_found")
      const cloned = await call("workspace.clone", { source: name, target: "cloned" })
      assert.strictEqual(cloned.workspace.hostname, "cloned")
      assert.deepStrictEqual(cloned.droppedMounts, [])
      const copied = await call("workspace.create", { name: "copied", from_snapshot: `${name}:t1` })
      assert.strictEqual(copied.hostname, "copied")
      assert.strictEqual(copied.state, "prepared")
      const mixed = await mcp.call("workspace.create", {
        name: "mixed",
        from_snapshot: `${name}:t1`,
        image: testImage
      })
      assert.strictEqual(mixed.error?.kind, "permanent")
      for (const copy of ["cloned", "copied"]) await call("workspace.delete", { name: copy })
      await call("workspace.delete", { name, force: true })
      const listed = await call("workspace.list", {})
      assert.deepStrictEqual(listed.workspaces, [])
      const oneShot = await call("workspace.run", { image: testImage, command: ["echo", "one-shot"] })
      assert.strictEqual(oneShot.result.stdout, "one-shot\n")
      assert.deepStrictEqual((await call("workspace.list", {})).workspaces, [])
    })
  })

  describe("serve mcp on raw stdio", () => {
    let stateDir: string
    beforeAll(async () => {
      stateDir = await makeStateDir(target)
    })
    afterAll(async () => {
      await removeStateDir(stateDir)
    })

    it("writes only protocol on stdout, finishes the calls under way, and exits 0 when stdin closes", async () => {
      const child = spawn(process.execPath, [binPath, "serve", "mcp", "--backend", testBackend], {
        env: { ...process.env, ...runtimeEnv, ...target.env, MICROAGENT_HOME: stateDir },
        stdio: ["pipe", "pipe", "pipe"]
      })
      let stdout = ""
      child.stdout.on("data", (data) => (stdout += data))
      const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)))
      const send = (message: object) => child.stdin.write(`${JSON.stringify(message)}\n`)
      send({
        jsonrpc: "2.0",
        id: 1,
        method: "initialize",
        params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "raw", version: "0" } }
      })
      send({ jsonrpc: "2.0", method: "notifications/initialized" })
      send({ jsonrpc: "2.0", id: 2, method: "tools/list" })
      send({
        jsonrpc: "2.0",
        id: 3,
        method: "tools/call",
        params: {
          name: "workspace.run",
          arguments: { image: testImage, command: ["sh", "-c", "sleep 0.3; echo late"] }
        }
      })
      // MCP lets a call to a tool without arguments leave `arguments` out.
      send({ jsonrpc: "2.0", id: 4, method: "tools/call", params: { name: "workspace.list" } })
      child.stdin.end()
      assert.strictEqual(await exited, 0)
      const messages = stdout.trim().split("\n").map((line) =>
        JSON.parse(line) as { id?: number; result?: any }
      )
      const byId = new Map(messages.filter((m) => m.id !== undefined).map((m) => [m.id, m]))
      assert.strictEqual(byId.get(1)?.result.serverInfo.name, "microagent")
      assert.isDefined(byId.get(1)?.result.capabilities.tools)
      assert.strictEqual(byId.get(2)?.result.tools.length, expectedTools.length)
      assert.strictEqual(byId.get(3)?.result.structuredContent.result.result.stdout, "late\n")
      // The list runs concurrently with the run: it sees the run's workspace or nothing.
      const listed = byId.get(4)?.result.structuredContent.result.workspaces as Array<{ name: string }>
      assert.isArray(listed)
      assert.isAtMost(listed.length, 1)
      for (const workspace of listed) assert.match(workspace.name, /^run-/)
    })
  })
}

/**
 * The Promise API on the fast tier: the same programs on the fake backend, through one Host.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, describe, it } from "vitest"
import { Host, init, MicroagentError, Workspace } from "../../src/promise/index.ts"

const host = Host.openTest()
afterAll(() => host.close())

const text = (data: Uint8Array) => new TextDecoder().decode(data)

describe("the Promise API (fake backend)", () => {
  it("creates, runs commands, streams output, halts, starts and deletes", async () => {
    const ws = await Workspace.create({ image: "alpine:3.20", name: "p-1", host })
    assert.strictEqual((await ws.inspect()).state, "running")

    const result = await ws.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert.deepStrictEqual([result.exitCode, result.stdout, result.stderr], [3, "out\n", "err\n"])
    const echoed = await ws.exec(["cat"], { stdin: "from stdin" })
    assert.strictEqual(echoed.stdout, "from stdin")

    const seen: Array<string> = []
    for await (const out of ws.stream(["sh", "-c", "echo a; echo b >&2"])) {
      seen.push(out.type === "exit" ? `exit ${out.result.exitCode}` : `${out.type} ${text(out.data)}`)
    }
    assert.deepInclude(seen, "stdout a\n")
    assert.deepInclude(seen, "stderr b\n")
    assert.strictEqual(seen.at(-1), "exit 0")

    // Files move on the fake backend's directory disk (test/e2e/promise.test.ts covers them on QEMU).
    await ws.files.write("/tmp/note.txt", "hello file")
    assert.strictEqual(await ws.files.readText("/tmp/note.txt"), "hello file")
    const missingFile = await ws.files.read("/tmp/none").catch((e: unknown) => e)
    assert.instanceOf(missingFile, MicroagentError)
    assert.strictEqual((missingFile as MicroagentError).kind, "not_found")

    await ws.halt()
    assert.strictEqual((await ws.inspect()).state, "halted")
    await ws.start()
    assert.strictEqual((await ws.inspect()).state, "running")

    await ws.delete()
    await ws.delete() // twice is no error
    const missing = await Workspace.get("p-1", { host }).catch((e: unknown) => e)
    assert.instanceOf(missing, MicroagentError)
    assert.strictEqual((missing as MicroagentError).kind, "not_found")
  })

  it("init writes a scaffold (refusing to overwrite it); setup then the entrypoint run at start, and result() answers", async () => {
    const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-promise-init-"))
    try {
      const written = await init({ name: "helper", provider: "openai", dir })
      assert.deepInclude(written, { name: "helper", provider: "openai", apiKeyEnv: "OPENAI_API_KEY" })
      assert.include(written.files, "microagent.yaml")
      assert.isTrue(NodeFs.existsSync(NodePath.join(dir, "helper", "microagent.yaml")))
      const again = await init({ name: "helper", dir }).catch((e: unknown) => e)
      assert.instanceOf(again, MicroagentError)
      assert.strictEqual((again as MicroagentError).kind, "conflict")
    } finally {
      NodeFs.rmSync(dir, { recursive: true, force: true })
    }

    const ws = await Workspace.create({
      image: "alpine:3.20",
      name: "p-agent",
      setup: ["echo prepared > marker"],
      entrypoint: "cat marker; echo answered",
      host
    })
    const result = await ws.result({ wait: true, timeoutSeconds: 30 })
    assert.deepInclude(result, { status: "exited", exitCode: 0, stdout: "prepared\nanswered\n" })
    assert.isDefined((await ws.inspect()).setupDone)
    await ws.delete()
  })

  it("supervises: a failing health check fails the workspace, and on-failure restarts it up to maxRestarts", async () => {
    const ws = await Workspace.create({
      image: "alpine:3.20",
      name: "p-supervised",
      restart: "on-failure",
      service: "sleep 600",
      health: { exec: ["false"], intervalSeconds: 1, retries: 1 },
      start: false,
      host
    })
    const record = await ws.inspect()
    assert.deepInclude(record, { restart: "on-failure", service: "sleep 600" })
    const report = await ws.supervise({ intervalSeconds: 1, maxRestarts: 1 })
    assert.deepInclude(report, { workspace: "p-supervised", restarts: 1, state: "failed" })
    assert.include((await ws.inspect()).failure ?? "", "health check failed 1 times in a row: false: exit 1")
    const bad = await Workspace.create({ image: "alpine:3.20", name: "p-bad", health: {}, host }).catch((
      e: unknown
    ) => e)
    assert.instanceOf(bad, MicroagentError)
    assert.include((bad as MicroagentError).message, "exactly one of exec")
    await ws.delete()
  })

  it("snapshots, rolls back, clones and creates from a snapshot", async () => {
    await using ws = await Workspace.create({ image: "alpine:3.20", name: "p-snap", host })
    await ws.exec(["sh", "-c", "echo before > tmp/file"])
    const manifest = await ws.snapshot({ tag: "t1" })
    assert.strictEqual(manifest.kind, "memory")
    await ws.exec(["sh", "-c", "echo after > tmp/file"])
    await ws.halt()
    await ws.start({ fromSnapshot: "t1" })
    assert.strictEqual((await ws.exec(["cat", "tmp/file"])).stdout, "before\n")
    const unknown = await ws.start({ fromSnapshot: "nope" }).catch((e: unknown) => e)
    assert.strictEqual((unknown as MicroagentError).kind, "not_found")

    const running = await ws.clone("p-clone").catch((e: unknown) => e)
    assert.strictEqual((running as MicroagentError).kind, "conflict")
    await ws.halt()
    const cloned = await ws.clone("p-clone")
    assert.deepStrictEqual(cloned.droppedMounts, [])
    assert.strictEqual((await cloned.workspace.inspect()).hostname, "p-clone")
    await using copy = await Workspace.fromSnapshot("p-copy", "p-snap:t1", { host })
    assert.strictEqual((await copy.inspect()).state, "prepared")
    await copy.start()
    assert.strictEqual((await copy.exec(["cat", "tmp/file"])).stdout, "before\n")
    const bad = await Workspace.fromSnapshot("p-bad", "p-snap", { host }).catch((e: unknown) => e)
    assert.strictEqual((bad as MicroagentError).kind, "permanent")
    await cloned.workspace.delete()
  })

  it("pauses and resumes: exec is refused while paused, both are idempotent, halt works from paused", async () => {
    await using ws = await Workspace.create({ image: "alpine:3.20", name: "p-pause", host })
    await ws.pause()
    assert.strictEqual((await ws.inspect()).state, "paused")
    await ws.pause()
    const refused = await ws.exec(["true"]).catch((e: unknown) => e)
    assert.instanceOf(refused, MicroagentError)
    assert.strictEqual((refused as MicroagentError).kind, "conflict")
    assert.include((refused as MicroagentError).remediation ?? "", "microagent resume p-pause")
    await ws.resume()
    await ws.resume()
    assert.strictEqual((await ws.inspect()).state, "running")
    assert.strictEqual((await ws.exec(["echo", "on"])).stdout, "on\n")
    await ws.pause()
    await ws.halt()
    assert.strictEqual((await ws.inspect()).state, "halted")
    const notPaused = await ws.resume().catch((e: unknown) => e)
    assert.strictEqual((notPaused as MicroagentError).kind, "conflict")
  })

  it("`await using` deletes the workspace, however the block ends", async () => {
    const name = "p-dispose"
    const failure = await (async () => {
      await using ws = await Workspace.create({ image: "alpine:3.20", name, host })
      assert.strictEqual((await ws.exec(["true"])).exitCode, 0)
      throw new Error("the application failed")
    })().catch((e: unknown) => e)
    assert.strictEqual((failure as Error).message, "the application failed")
    const names: Array<string> = (await Workspace.list({ host })).map((w) => w.name)
    assert.notInclude(names, name)
  })

  it("failures reject with a MicroagentError carrying the library's kind", async () => {
    await using ws = await Workspace.create({ image: "alpine:3.20", name: "p-errors", host })
    const taken = await Workspace.create({ image: "alpine:3.20", name: "p-errors", host }).catch((
      e: unknown
    ) => e)
    assert.instanceOf(taken, MicroagentError)
    assert.strictEqual((taken as MicroagentError).kind, "conflict")
    assert.strictEqual((taken as MicroagentError).tag, "Conflict")
    assert.isNotEmpty((taken as MicroagentError).remediation)

    const relative = await ws.files.write("relative/path", "x").catch((e: unknown) => e)
    assert.instanceOf(relative, MicroagentError)
    assert.strictEqual((relative as MicroagentError).tag, "InvalidInput")
    assert.strictEqual((relative as MicroagentError).kind, "permanent")

    await ws.kill()
    const stopped = await ws.exec(["true"]).catch((e: unknown) => e)
    assert.strictEqual((stopped as MicroagentError).kind, "conflict", String(stopped))
  })

  it("an aborted exec stops the command and rejects with the signal's reason", async () => {
    await using ws = await Workspace.create({ image: "alpine:3.20", name: "p-abort", host })
    const controller = new AbortController()
    const running = ws.exec(["sleep", "60"], { signal: controller.signal }).catch((e: unknown) => e)
    setTimeout(() => controller.abort(new Error("enough")), 300)
    const outcome = await running
    assert.strictEqual((outcome as Error).message, "enough")
    assert.strictEqual((await ws.exec(["echo", "still fine"])).stdout, "still fine\n")
  })

  it("a Host closes its state directory; a test Host removes its temporary one", async () => {
    const own = Host.openTest()
    const ws = await Workspace.create({ image: "alpine:3.20", name: "p-close", host: own })
    const root = (await ws.inspect()).runtimeDir
    await own.close()
    assert.isFalse(NodeFs.existsSync(root))
  })
})

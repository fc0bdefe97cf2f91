/**
 * The Promise API on a real QEMU microVM: one workspace of the built-in image, driven through
 * `microagent/promise` in this process (no runtime), its files moved over the guest channel while it
 * runs and on its disk while it is halted.
 */
import * as NodeFs from "node:fs"
import * as NodeHttp from "node:http"
import type * as NodeNet from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, describe, it } from "vitest"
import { defaultImage } from "../../src/layers/image/BuiltinImages.ts"
import { Host, MicroagentError, Workspace } from "../../src/promise/index.ts"
import { qemuProcessesMentioning } from "../support/kernel.ts"
import { requireTool } from "../support/registry.ts"

const home = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-promise-"))
afterAll(() => NodeFs.rmSync(home, { recursive: true, force: true }))

describe("the Promise API (qemu backend)", () => {
  it("boots a workspace, runs commands, moves files, halts, starts and deletes it", async () => {
    requireTool("qemu-system-x86_64", "qemu-system-x86")
    requireTool("mke2fs", "e2fsprogs")
    await using host = Host.open({ home, backend: "qemu" })
    {
      await using ws = await Workspace.create({ image: defaultImage, name: "promised", host })
      const result = await ws.exec(["sh", "-c", "uname -s; echo err >&2; exit 4"])
      assert.deepStrictEqual([result.exitCode, result.stdout, result.stderr], [4, "Linux\n", "err\n"])

      const chunks: Array<string> = []
      for await (const out of ws.stream(["sh", "-c", "echo one; echo two"])) {
        if (out.type === "stdout") chunks.push(new TextDecoder().decode(out.data))
        else if (out.type === "exit") assert.strictEqual(out.result.exitCode, 0)
      }
      assert.strictEqual(chunks.join(""), "one\ntwo\n")

      await ws.files.write("/root/note.txt", "written by the host\n")
      assert.strictEqual((await ws.exec(["cat", "/root/note.txt"])).stdout, "written by the host\n")
      await ws.exec(["sh", "-c", "echo from the guest > /root/reply.txt; sync"])
      assert.strictEqual(await ws.files.readText("/root/reply.txt"), "from the guest\n")

      await ws.halt()
      assert.strictEqual((await ws.inspect()).state, "halted")
      // Offline, on the halted workspace's disk.
      assert.strictEqual(await ws.files.readText("/root/note.txt"), "written by the host\n")
      const committed = await ws.commit("localhost/promise/note:1", { message: "from the Promise API" })
      assert.deepStrictEqual([committed.ref, committed.layers, committed.diff], [
        "localhost/promise/note:1",
        1,
        false
      ])
      assert.match(committed.digest, /^sha256:[0-9a-f]{64}$/)
      await ws.start()
      assert.strictEqual((await ws.exec(["cat", "/root/reply.txt"])).stdout, "from the guest\n")
    }
    // `await using` deleted it: no record, no VMM.
    const gone = await Workspace.get("promised", { host }).catch((e: unknown) => e)
    assert.instanceOf(gone, MicroagentError)
    assert.strictEqual((gone as MicroagentError).kind, "not_found")
    assert.deepStrictEqual(qemuProcessesMentioning(home), [])
  })

  it("delivers secrets and holds brokered ones on the host, resolved in this process at each start", async () => {
    const seen: Array<string | undefined> = []
    const upstream = NodeHttp.createServer((request, response) => {
      seen.push(request.headers["x-api-key"] as string | undefined)
      response.end("ok")
    })
    await new Promise<void>((resolve) => upstream.listen(0, "127.0.0.1", resolve))
    const port = (upstream.address() as NodeNet.AddressInfo).port
    process.env.PROMISE_TEST_PLAIN = "plain-value"
    process.env.PROMISE_TEST_KEY = "brokered-value"
    try {
      await using host = Host.open({ home, backend: "qemu" })
      await using ws = await Workspace.create({
        image: defaultImage,
        name: "promised-secrets",
        network: "isolated",
        secrets: ["PLAIN=env:PROMISE_TEST_PLAIN"],
        brokers: [`upstream=http://127.0.0.1:${port};secret=KEY=env:PROMISE_TEST_KEY;base-url-env=API`],
        host
      })
      const result = await ws.exec([
        "sh",
        "-c",
        `cat /run/secrets/PLAIN; echo; ls /run/secrets; wget -q -O - --header 'X-Api-Key: @secret:KEY' "$API/x"`
      ])
      assert.strictEqual(result.stdout, "plain-value\nPLAIN\nok")
      assert.deepStrictEqual(seen, ["brokered-value"])
    } finally {
      upstream.close()
      delete process.env.PROMISE_TEST_PLAIN
      delete process.env.PROMISE_TEST_KEY
    }
  })
})

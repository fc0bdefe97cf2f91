/**
 * The Effect library on a real QEMU microVM, composed as a host application does: `Microagent.layer`
 * and the programs, in this process.
 */
import { Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, describe, it } from "vitest"
import { ExecRequest } from "../../src/domain/Exec.ts"
import { defaultImage } from "../../src/layers/image/BuiltinImages.ts"
import * as Microagent from "../../src/Microagent.ts"
import { create } from "../../src/programs/Create.ts"
import { remove } from "../../src/programs/Delete.ts"
import { exec } from "../../src/programs/Exec.ts"
import { start } from "../../src/programs/Start.ts"
import { qemuProcessesMentioning } from "../support/kernel.ts"
import { requireTool } from "../support/registry.ts"

const home = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-library-"))
afterAll(() => NodeFs.rmSync(home, { recursive: true, force: true }))

describe("the Effect library (qemu backend)", () => {
  it("boots a workspace inside an uninterruptible region, as an acquireRelease's acquire runs", async () => {
    requireTool("qemu-system-x86_64", "qemu-system-x86")
    requireTool("mke2fs", "e2fsprogs")
    const program = Effect.scoped(Effect.gen(function*() {
      // The whole boot is the acquisition: it must finish although nothing in it can be interrupted.
      const ws = yield* Effect.acquireRelease(
        create({ image: defaultImage, name: "acquired" }).pipe(Effect.zipRight(start("acquired"))),
        (ws) => remove(ws.name, { force: true }).pipe(Effect.ignore)
      )
      const result = yield* exec(ws.name, new ExecRequest({ argv: ["sh", "-c", "echo acquired $0"] }))
      return [ws.state, result.stdout]
    }))
    // A boot that cannot finish there shows as this test's timeout: nothing can interrupt it.
    const [state, stdout] = await Effect.runPromise(
      program.pipe(Effect.provide(Microagent.layer({ home, backend: "qemu" })))
    )
    assert.deepStrictEqual([state, stdout], ["running", "acquired sh\n"])
    assert.deepStrictEqual(qemuProcessesMentioning(home), [])
  }, 240_000)
})

import { Command } from "@effect/cli"
import * as NodeContext from "@effect/platform-node/NodeContext"
import { afterAll, assert, describe, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { Invocation } from "../../src/cli/Invocation.ts"
import { kernelCommand } from "../../src/cli/kernel.ts"
import { cleanupTempDirs, tempDir } from "../support/kernel.ts"
import { fakeVmlinux } from "./fixtures.ts"

/** Runs `microagent kernel …` in-process with JSON output, returning what it printed. */
const run = (stateDir: string, args: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const printed: Array<string> = []
    const write = process.stdout.write.bind(process.stdout)
    process.stdout.write = ((chunk: string | Uint8Array, ...rest: Array<unknown>) => {
      printed.push(typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("utf8"))
      const callback = rest.find((r) => typeof r === "function") as (() => void) | undefined
      callback?.()
      return true
    }) as typeof process.stdout.write
    const cli = Command.run(kernelCommand, { name: "microagent", version: "test" })
    const exit = yield* Effect.exit(cli(["node", "microagent", ...args])).pipe(
      Effect.provideService(Invocation, {
        json: true,
        stateDir,
        backend: undefined,
        noColor: true,
        guestArgv: []
      }),
      Effect.provide(NodeContext.layer),
      Effect.ensuring(Effect.sync(() => {
        process.stdout.write = write
      }))
    )
    return { exit, output: printed.join("") }
  })

afterAll(cleanupTempDirs)

describe("microagent kernel", () => {
  it.live("installs from a path, lists, verifies and reports tampering", () =>
    Effect.gen(function*() {
      const state = tempDir("microagent-kcli-")
      const vmlinux = NodePath.join(state, "vmlinux-in")
      NodeFs.writeFileSync(vmlinux, fakeVmlinux({ version: "6.6.6-cli" }))

      const installed = yield* run(state, ["install", "--path", vmlinux])
      assert.isTrue(Exit.isSuccess(installed.exit))
      const entry = JSON.parse(installed.output)
      assert.strictEqual(entry.version, "6.6.6-cli")
      assert.strictEqual(entry.format, "elf")

      const listed = yield* run(state, ["list"])
      assert.deepStrictEqual(JSON.parse(listed.output).kernels.map((k: { sha256: string }) => k.sha256), [
        entry.sha256
      ])

      const verified = yield* run(state, ["verify"])
      assert.isTrue(Exit.isSuccess(verified.exit))
      assert.isTrue(JSON.parse(verified.output).ok)

      NodeFs.appendFileSync(entry.path, "tampered")
      const tampered = yield* run(state, ["verify"])
      assert.isTrue(Exit.isFailure(tampered.exit))
      assert.isFalse(JSON.parse(tampered.output).ok)

      const usage = yield* run(state, ["install", "--url", "http://127.0.0.1:1/k"])
      assert.isTrue(Exit.isFailure(usage.exit))
      assert.include(JSON.stringify(usage.exit), "--sha256")
    }))

  it.live("prints help without creating the state directory", () =>
    Effect.gen(function*() {
      const state = NodePath.join(NodeOs.tmpdir(), `microagent-kcli-none-${process.pid}`)
      const help = yield* run(state, ["install", "--help"])
      assert.isTrue(Exit.isSuccess(help.exit))
      assert.isFalse(NodeFs.existsSync(state))
    }))
})

import { Command } from "@effect/cli"
import * as NodeContext from "@effect/platform-node/NodeContext"
import { afterAll, assert, describe, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodeHttp from "node:http"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { Invocation } from "../../src/cli/Invocation.ts"
import { kernelCommand } from "../../src/cli/kernel.ts"
import { runtimeNodeFlags } from "../../src/rpc/Launcher.ts"
import { binPath } from "../support/cli.ts"
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

  // The runtime runs with V8's compilers off (--jitless), where WebAssembly does not exist: `fetch`
  // (whose HTTP parser is WebAssembly) ended the whole process the first time it was called.
  it.live("installs from a URL in a process with the runtime's V8 flags", () =>
    Effect.gen(function*() {
      const state = tempDir("microagent-kcli-url-")
      const cache = tempDir("microagent-kcli-cache-")
      const body = fakeVmlinux({ version: "6.6.7-url" })
      const sha256 = NodeCrypto.createHash("sha256").update(body).digest("hex")
      const server = NodeHttp.createServer((_, response) => {
        response.writeHead(200, { "content-type": "application/octet-stream" })
        response.end(body)
      })
      yield* Effect.async<void>((resume) => {
        server.listen(0, "127.0.0.1", () => resume(Effect.void))
      })
      const url = `http://127.0.0.1:${(server.address() as { port: number }).port}/vmlinux`
      const result = yield* Effect.async<{ code: number | null; stdout: string; stderr: string }>(
        (resume) => {
          const child = NodeChild.spawn(
            process.execPath,
            [...runtimeNodeFlags, binPath, "kernel", "install", "--url", url, "--sha256", sha256],
            {
              env: {
                ...process.env,
                MICROAGENT_HOME: state,
                MICROAGENT_OUTPUT: "json",
                XDG_CACHE_HOME: cache
              },
              stdio: ["ignore", "pipe", "pipe"]
            }
          )
          let stdout = ""
          let stderr = ""
          child.stdout.on("data", (d) => (stdout += d))
          child.stderr.on("data", (d) => (stderr += d))
          child.on("close", (code) => resume(Effect.succeed({ code, stdout, stderr })))
        }
      ).pipe(Effect.ensuring(Effect.sync(() => server.close())))
      assert.strictEqual(result.code, 0, result.stderr)
      const entry = JSON.parse(result.stdout)
      assert.strictEqual(entry.version, "6.6.7-url")
      assert.strictEqual(entry.source, `url:${url}`)
      assert.strictEqual(entry.sha256, sha256)
      // Only the distribution's kernel goes to the user's shared store: a URL's stays in its state directory.
      const shared = NodePath.join(cache, "microagent", "kernels", "index.json")
      assert.isFalse(NodeFs.existsSync(shared), "a kernel installed from a URL was shared")
    }))
})

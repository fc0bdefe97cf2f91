/**
 * `init`: the scaffold of each provider (its spec decodes with the project's own decoder and names
 * files that exist; its agent script, run on the host by busybox's sh without curl and by the host's
 * shell with curl, asks a stand-in of the provider's API and prints the reply), and its refusal to
 * overwrite.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Either, Exit, Option } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { decodeSpec } from "../../src/domain/Spec.ts"
import { defaultImage } from "../../src/layers/image/BuiltinImages.ts"
import { init } from "../../src/programs/Init.ts"
import { providers, providerShape } from "../../src/programs/internal/Scaffold.ts"
import { standInReply, startProviderStandIn } from "../support/providerStandIn.ts"
import { requireTool } from "../support/registry.ts"

const tempDir = () => NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-init-"))

const failureOf = <A, E>(exit: Exit.Exit<A, E>) =>
  Exit.isFailure(exit) ? Option.getOrThrow(Cause.failureOption(exit.cause)) : undefined

/** A directory of busybox applets only: the agent script finds no curl there and uses wget. */
const busyboxBin = (dir: string) => {
  const busybox = requireTool("busybox", "busybox-static")
  const bin = NodePath.join(dir, "bin")
  NodeFs.mkdirSync(bin)
  for (const applet of ["sh", "sed", "awk", "tr", "cat", "mkdir", "wget", "rm"]) {
    NodeFs.symlinkSync(busybox, NodePath.join(bin, applet))
  }
  return bin
}

/** Runs the agent script with `shell` (argv), in exactly `env`. */
const runAgent = (
  script: string,
  env: Record<string, string>,
  shell: ReadonlyArray<string> = ["/bin/sh"]
): Promise<{ code: number | null; stdout: string; stderr: string }> =>
  new Promise((resolve) => {
    const child = NodeChild.spawn(shell[0]!, [...shell.slice(1), script], { env })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()))
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()))
    child.on("close", (code) => resolve({ code, stdout, stderr }))
  })

describe("init", () => {
  for (const provider of providers) {
    it.live(`${provider}: a spec the decoder accepts, and an agent that asks the provider's API`, () =>
      Effect.gen(function*() {
        const dir = tempDir()
        yield* Effect.addFinalizer(() =>
          Effect.sync(() => NodeFs.rmSync(dir, { recursive: true, force: true }))
        )
        const shape = providerShape(provider)
        const written = yield* init({ name: `${provider}-agent`, provider, dir })
        const root = NodePath.join(dir, `${provider}-agent`)
        assert.deepStrictEqual(written, {
          name: `${provider}-agent`,
          provider,
          directory: root,
          apiKeyEnv: shape.keyVar,
          files: ["microagent.yaml", "agent.sh", "system_prompt.md", "README.md", "demo/input.txt"],
          overwritten: []
        })
        assert.strictEqual(NodeFs.statSync(NodePath.join(root, "agent.sh")).mode & 0o777, 0o755)

        const spec = Either.getOrThrow(
          decodeSpec(NodeFs.readFileSync(NodePath.join(root, "microagent.yaml"), "utf8"), "microagent.yaml")
        )
        assert.strictEqual(spec.name, `${provider}-agent`)
        assert.strictEqual(spec.image, defaultImage)
        assert.strictEqual(spec.entrypoint, "/workspace/agent.sh")
        assert.deepStrictEqual(spec.egress, { allow: [shape.host], lockAllowlist: true })
        assert.deepStrictEqual(spec.outputs, [{ name: "reply", path: "/workspace/out/reply.txt" }])
        assert.strictEqual(spec.setup?.length, 2)
        for (const file of spec.files ?? []) assert.isTrue(NodeFs.existsSync(NodePath.join(root, file.src)))
        assert.include(NodeFs.readFileSync(NodePath.join(root, "README.md"), "utf8"), shape.keyVar)

        const standIn = yield* Effect.acquireRelease(
          Effect.promise(() => startProviderStandIn()),
          (s) => Effect.promise(() => s.close())
        )
        const input = NodeFs.readFileSync(NodePath.join(root, "demo/input.txt"), "utf8").trim()
        const base = `http://127.0.0.1:${standIn.port}${provider === "openai" ? "/v1" : ""}`
        const env = {
          AGENT_INPUT: NodePath.join(root, "demo/input.txt"),
          AGENT_SYSTEM_PROMPT: NodePath.join(root, "system_prompt.md"),
          [shape.baseVar]: base,
          [shape.keyVar]: "test-key"
        }
        // wget (busybox, as in the built-in image), then curl (the host's).
        requireTool("curl", "curl")
        const shells = [
          { shell: [requireTool("busybox", "busybox-static"), "sh"], path: busyboxBin(dir), out: "out-wget" },
          { shell: ["/bin/sh"], path: process.env.PATH ?? "/usr/bin:/bin", out: "out-curl" }
        ]
        for (const { out, path, shell } of shells) {
          const outDir = NodePath.join(dir, out)
          const result = yield* Effect.promise(() =>
            runAgent(NodePath.join(root, "agent.sh"), { ...env, AGENT_OUT: outDir, PATH: path }, shell)
          )
          assert.strictEqual(result.code, 0, `${out}: ${result.stderr}`)
          assert.strictEqual(result.stdout, `${standInReply(input)}\n`)
          assert.strictEqual(NodeFs.readFileSync(NodePath.join(outDir, "reply.txt"), "utf8"), result.stdout)
        }
        assert.strictEqual(standIn.requests.length, 2)
        for (const request of standIn.requests) {
          assert.strictEqual(request.method, "POST")
          const body = request.body as any
          if (provider === "anthropic") {
            assert.strictEqual(request.url, "/v1/messages")
            assert.strictEqual(request.headers["x-api-key"], "test-key")
            assert.strictEqual(request.headers["anthropic-version"], "2023-06-01")
            assert.strictEqual(body.model, shape.model)
            assert.strictEqual(body.messages[0].content, input)
            assert.include(body.system, "careful assistant")
          } else if (provider === "openai") {
            assert.strictEqual(request.url, "/v1/chat/completions")
            assert.strictEqual(request.headers.authorization, "Bearer test-key")
            assert.strictEqual(body.messages[1].content, input)
          } else {
            assert.strictEqual(request.url, `/v1beta/models/${shape.model}:generateContent`)
            assert.strictEqual(request.headers["x-goog-api-key"], "test-key")
            assert.strictEqual(body.contents[0].parts[0].text, input)
          }
        }
      }).pipe(Effect.scoped))
  }

  it.live("an agent without a key or an input says what is missing", () =>
    Effect.gen(function*() {
      const dir = tempDir()
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => NodeFs.rmSync(dir, { recursive: true, force: true }))
      )
      yield* init({ name: "a", dir })
      const script = NodePath.join(dir, "a", "agent.sh")
      const noKey = yield* Effect.promise(() => runAgent(script, { PATH: process.env.PATH ?? "" }))
      assert.strictEqual(noKey.code, 2)
      assert.include(noKey.stderr, "--secret ANTHROPIC_API_KEY=env:ANTHROPIC_API_KEY")
      const noInput = yield* Effect.promise(() =>
        runAgent(script, {
          PATH: process.env.PATH ?? "",
          ANTHROPIC_API_KEY: "k",
          AGENT_INPUT: NodePath.join(dir, "missing.txt")
        })
      )
      assert.strictEqual(noInput.code, 2)
      assert.include(noInput.stderr, "no input at")
    }).pipe(Effect.scoped))

  it.live("refuses to overwrite without force (nothing written), overwrites with it", () =>
    Effect.gen(function*() {
      const dir = tempDir()
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => NodeFs.rmSync(dir, { recursive: true, force: true }))
      )
      const root = NodePath.join(dir, "mine")
      NodeFs.mkdirSync(root)
      NodeFs.writeFileSync(NodePath.join(root, "microagent.yaml"), "name: mine\n")
      const refused = failureOf(yield* Effect.exit(init({ name: "mine", dir })))
      assert.strictEqual(refused?._tag, "Conflict")
      assert.include(refused?.message ?? "", "microagent.yaml")
      assert.deepStrictEqual(NodeFs.readdirSync(root), ["microagent.yaml"])
      assert.strictEqual(NodeFs.readFileSync(NodePath.join(root, "microagent.yaml"), "utf8"), "name: mine\n")
      const forced = yield* init({ name: "mine", dir, force: true, provider: "openai" })
      assert.deepStrictEqual(forced.overwritten, ["microagent.yaml"])
      assert.include(NodeFs.readFileSync(NodePath.join(root, "microagent.yaml"), "utf8"), "api.openai.com")
      const badName = failureOf(yield* Effect.exit(init({ name: "../escape", dir })))
      assert.strictEqual(badName?._tag, "InvalidInput")
    }).pipe(Effect.scoped))
})

/**
 * The auth file `registry login` writes (fast tier): atomic, 0600, other entries and keys kept, read back
 * by the pull path's credential lookup, never listing a password; and the CLI's argument checks.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { listLogins, loginFile, removeLogin, saveLogin } from "../../src/layers/registry/AuthFile.ts"
import { lookupCredential } from "../../src/layers/registry/Credentials.ts"
import { cliAsync, errorOf } from "../support/cli.ts"

const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-authfile-"))
let n = 0
const fresh = () => NodePath.join(dir, `case-${++n}`, "auth.json")
const read = (file: string) => JSON.parse(NodeFs.readFileSync(file, "utf8")) as Record<string, any>

describe("the registry auth file", () => {
  it("is $REGISTRY_AUTH_FILE when set, else the Home's auth.json", () => {
    assert.strictEqual(loginFile({ authFile: "/a.json", homeAuthFile: "/h/auth.json" }), "/a.json")
    assert.strictEqual(loginFile({ authFile: "", homeAuthFile: "/h/auth.json" }), "/h/auth.json")
    assert.strictEqual(loginFile({ homeAuthFile: "/h/auth.json" }), "/h/auth.json")
  })

  it.effect("is created 0600 in a 0700 directory, and the pull path reads the saved login", () =>
    Effect.gen(function*() {
      const file = fresh()
      yield* saveLogin(file, "127.0.0.1:5000", "ci", "pa:ss")
      assert.strictEqual(NodeFs.statSync(file).mode & 0o777, 0o600)
      assert.strictEqual(NodeFs.statSync(NodePath.dirname(file)).mode & 0o777, 0o700)
      const credential = yield* lookupCredential("127.0.0.1:5000", { homeAuthFile: file })
      assert.deepStrictEqual([credential?.username, credential?.password, credential?.source], [
        "ci",
        "pa:ss",
        file
      ])
      // Nothing but the file itself is left in its directory: the temporary file was renamed over it.
      assert.deepStrictEqual(NodeFs.readdirSync(NodePath.dirname(file)), ["auth.json"])
    }))

  it.effect("keeps other entries and keys, replaces the host's entry under any spelling", () =>
    Effect.gen(function*() {
      const file = fresh()
      NodeFs.mkdirSync(NodePath.dirname(file), { recursive: true })
      NodeFs.writeFileSync(
        file,
        JSON.stringify({
          auths: { "https://index.docker.io/v1/": { auth: "b2xkOm9sZA==" }, "ghcr.io": { auth: "Z2g6dG9r" } },
          credHelpers: { "gcr.io": "gcloud" }
        }),
        { mode: 0o644 }
      )
      yield* saveLogin(file, "docker.io", "me", "new")
      const saved = read(file)
      assert.deepStrictEqual(Object.keys(saved.auths).sort(), ["docker.io", "ghcr.io"])
      assert.strictEqual(saved.auths["ghcr.io"].auth, "Z2g6dG9r")
      assert.strictEqual(Buffer.from(saved.auths["docker.io"].auth, "base64").toString(), "me:new")
      assert.deepStrictEqual(saved.credHelpers, { "gcr.io": "gcloud" })
      assert.strictEqual(NodeFs.statSync(file).mode & 0o777, 0o600)

      yield* removeLogin(file, "https://index.docker.io/v1/")
      assert.deepStrictEqual(Object.keys(read(file).auths), ["ghcr.io"])
      const again = yield* Effect.exit(removeLogin(file, "docker.io"))
      assert.isTrue(Exit.isFailure(again))
      assert.strictEqual(Exit.isFailure(again) && (again.cause as any).error?.kind, "not_found")
    }))

  it.effect("leaves a file it cannot parse unchanged", () =>
    Effect.gen(function*() {
      const file = fresh()
      NodeFs.mkdirSync(NodePath.dirname(file), { recursive: true })
      NodeFs.writeFileSync(file, "{ not json")
      const exit = yield* Effect.exit(saveLogin(file, "ghcr.io", "me", "pw"))
      assert.isTrue(Exit.isFailure(exit))
      assert.strictEqual(NodeFs.readFileSync(file, "utf8"), "{ not json")
      assert.deepStrictEqual(NodeFs.readdirSync(NodePath.dirname(file)), ["auth.json"])
    }))

  it.effect("lists hosts, usernames and files, never a password", () =>
    Effect.gen(function*() {
      const file = fresh()
      yield* saveLogin(file, "ghcr.io", "me", "very-secret-password")
      const docker = NodePath.join(dir, `docker-${n}.json`)
      NodeFs.writeFileSync(docker, JSON.stringify({ credHelpers: { "gcr.io": "gcloud" } }))
      const logins = yield* listLogins({ homeAuthFile: file, dockerConfig: docker })
      assert.deepStrictEqual(logins, [
        { registry: "ghcr.io", username: "me", source: file },
        { registry: "gcr.io", source: `${docker} (docker-credential-gcloud)` }
      ])
      assert.notInclude(JSON.stringify(logins), "very-secret-password")
    }))
})

describe("registry login's arguments", () => {
  const stateDir = NodePath.join(dir, "cli-home")
  it("refuses both password sources, none, and an empty one, saving nothing", async () => {
    for (
      const [args, input] of [
        [["-p", "x", "--password-stdin"], ""],
        [[], ""],
        [["--password-stdin"], "\n"]
      ] as const
    ) {
      const result = await cliAsync(["registry", "login", "127.0.0.1:1", "-u", "ci", ...args], {
        stateDir,
        env: { MICROAGENT_OUTPUT: "json" },
        input
      })
      assert.strictEqual(result.code, 2, result.stderr)
      assert.strictEqual(errorOf(result).error.kind, "permanent")
    }
    const noUser = await cliAsync(["registry", "login", "127.0.0.1:1", "-p", "x"], { stateDir })
    assert.strictEqual(noUser.code, 2)
    assert.isFalse(NodeFs.existsSync(NodePath.join(stateDir, "auth.json")))
  }, 60_000)

  it("image push needs a reference", async () => {
    const result = await cliAsync(["image", "push"], { stateDir })
    assert.strictEqual(result.code, 2)
  }, 30_000)
})

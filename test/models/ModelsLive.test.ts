/**
 * The model store against a loopback hub (paths-info, a 302 to a CDN path, bearer auth, Range, a cut
 * connection) on the real SQLite database: verified pull, resume, refusal on a wrong digest or a
 * broken GGUF with nothing recorded, auth, delete and prune.
 */
import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Either, Layer } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import * as ModelsLive from "../../src/layers/model/ModelsLive.ts"
import * as Database from "../../src/layers/state/Database.ts"
import { Home } from "../../src/services/Home.ts"
import { Models } from "../../src/services/Models.ts"
import { makeTempDir } from "../support/fakeEnvironment.ts"
import { tinyGguf } from "../support/gguf.ts"
import { type Hub, startHub } from "../support/hfHub.ts"

delete process.env["HF_TOKEN"]
delete process.env["HUGGING_FACE_HUB_TOKEN"]

const withStore = <A, E>(f: (models: Models["Type"], hub: Hub, root: string) => Effect.Effect<A, E>) =>
  Effect.scoped(Effect.gen(function*() {
    const root = yield* makeTempDir("ma-models")
    const hub = yield* Effect.acquireRelease(Effect.promise(startHub), (h) => Effect.promise(h.close))
    const layer = ModelsLive.layer.pipe(
      Layer.provideMerge(Database.layer),
      Layer.provideMerge(Home.layer(root)),
      Layer.provide(
        Layer.setConfigProvider(ConfigProvider.fromJson({ MICROAGENT_HF_ENDPOINT: hub.endpoint }))
      )
    )
    return yield* Effect.provide(Effect.flatMap(Models, (models) => f(models, hub, root)), layer)
  }))

const blobsOf = (root: string) => {
  const dir = NodePath.join(root, "models", "blobs")
  return NodeFs.existsSync(dir) ? NodeFs.readdirSync(dir) : []
}
const partialsOf = (root: string) => {
  const dir = NodePath.join(root, "models", "partial")
  return NodeFs.existsSync(dir) ? NodeFs.readdirSync(dir) : []
}

describe("ModelsLive", () => {
  it.effect("pulls through the CDN redirect, verifies, lists and inspects", () =>
    withStore((models, hub, root) =>
      Effect.gen(function*() {
        hub.files.set("org/repo/main/tiny.gguf", { bytes: tinyGguf() })
        const record = yield* models.pull("hf.co/org/repo/tiny.gguf")
        assert.strictEqual(record.ref, "hf.co/org/repo@main/tiny.gguf")
        assert.match(record.digest, /^sha256:[0-9a-f]{64}$/)
        assert.strictEqual(record.gguf.architecture, "llama")
        assert.strictEqual(record.gguf.contextLength, 256)
        assert.strictEqual(NodeFs.statSync(record.path).mode & 0o777, 0o600)
        assert.strictEqual(NodeFs.statSync(NodePath.join(root, "models", "blobs")).mode & 0o777, 0o700)
        assert.deepStrictEqual(hub.ranges, [undefined])
        const listed = yield* models.list
        assert.deepStrictEqual(listed.map((m) => m.ref), [record.ref])
        const inspected = yield* models.inspect("org/repo/tiny.gguf@main")
        assert.strictEqual(inspected.gguf.name, "tiny-test")
        assert.deepStrictEqual(partialsOf(root), [])
      })
    ))

  it.effect("resumes a cut download with Range and verifies the whole file", () =>
    withStore((models, hub, root) =>
      Effect.gen(function*() {
        const bytes = tinyGguf({ padTo: 256 * 1024 })
        hub.files.set("org/repo/v1/big.gguf", { bytes })
        hub.cutNextAfter = 100 * 1024
        const first = yield* Effect.either(models.pull("hf.co/org/repo@v1/big.gguf"))
        assert.strictEqual(Either.isLeft(first) && first.left._tag, "Transient")
        assert.strictEqual(partialsOf(root).length, 1)
        assert.deepStrictEqual(yield* models.list, [])
        const record = yield* models.pull("hf.co/org/repo@v1/big.gguf")
        assert.strictEqual(record.sizeBytes, bytes.length)
        assert.strictEqual(hub.ranges.length, 2)
        assert.match(hub.ranges[1] ?? "", /^bytes=[1-9]\d*-$/)
        assert.deepStrictEqual(partialsOf(root), [])
      })
    ))

  it.effect("refuses a wrong sha256, a non-LFS file and a broken GGUF, recording and keeping nothing", () =>
    withStore((models, hub, root) =>
      Effect.gen(function*() {
        hub.files.set("org/repo/main/wrong.gguf", { bytes: tinyGguf(), sha256: "ab".repeat(32) })
        hub.files.set("org/repo/main/plain.gguf", { bytes: tinyGguf(), sha256: null })
        hub.files.set("org/repo/main/magic.gguf", { bytes: tinyGguf({ magic: "GGML" }) })
        hub.files.set("org/repo/main/cut.gguf", { bytes: tinyGguf().subarray(0, 50) })
        const wrong = yield* Effect.either(models.pull("hf.co/org/repo/wrong.gguf"))
        assert.isTrue(Either.isLeft(wrong) && wrong.left.message.includes("refused"))
        const plain = yield* Effect.either(models.pull("hf.co/org/repo/plain.gguf"))
        assert.strictEqual(Either.isLeft(plain) && plain.left._tag, "PolicyDenied")
        for (const name of ["magic", "cut"]) {
          const bad = yield* Effect.either(models.pull(`hf.co/org/repo/${name}.gguf`))
          assert.isTrue(Either.isLeft(bad) && bad.left.message.includes("not a usable GGUF"), name)
        }
        const malformed = yield* Effect.either(models.pull("hf.co/org/repo/../x.gguf"))
        assert.strictEqual(Either.isLeft(malformed) && malformed.left._tag, "InvalidInput")
        assert.deepStrictEqual(yield* models.list, [])
        assert.deepStrictEqual(blobsOf(root), [])
        assert.deepStrictEqual(partialsOf(root), [])
      })
    ))

  it.effect("sends the bearer token; without it the hub's 401 is policy_denied", () =>
    withStore((models, hub) =>
      Effect.gen(function*() {
        hub.token = "secret-token"
        hub.files.set("org/private/main/m.gguf", { bytes: tinyGguf() })
        const denied = yield* Effect.either(models.pull("hf.co/org/private/m.gguf"))
        assert.strictEqual(Either.isLeft(denied) && denied.left._tag, "PolicyDenied")
        const record = yield* models.pull("hf.co/org/private/m.gguf", { token: "secret-token" })
        assert.strictEqual(record.gguf.architecture, "llama")
      })
    ))

  it.effect("deletes a record and its blob, and prunes partials and unreferenced blobs", () =>
    withStore((models, hub, root) =>
      Effect.gen(function*() {
        hub.files.set("org/repo/main/a.gguf", { bytes: tinyGguf() })
        const a = yield* models.pull("hf.co/org/repo/a.gguf")
        const removed = yield* models.remove("hf.co/org/repo/a.gguf")
        assert.strictEqual(removed.ref, a.ref)
        assert.isFalse(NodeFs.existsSync(a.path))
        const again = yield* Effect.either(models.remove("hf.co/org/repo/a.gguf"))
        assert.strictEqual(Either.isLeft(again) && again.left._tag, "NotFound")
        yield* models.pull("hf.co/org/repo/a.gguf")
        NodeFs.writeFileSync(NodePath.join(root, "models", "blobs", "sha256-stray"), "x")
        NodeFs.writeFileSync(NodePath.join(root, "models", "partial", "sha256-half"), "x")
        const pruned = yield* models.prune
        assert.deepStrictEqual(pruned, { partials: ["sha256-half"], blobs: ["sha256-stray"] })
        assert.strictEqual(blobsOf(root).length, 1)
        assert.strictEqual((yield* models.list).length, 1)
      })
    ))
})

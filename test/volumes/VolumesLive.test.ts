/**
 * The volume store on the real SQLite database and mke2fs (no VM): names, sizes, file modes, the
 * single read-write holder by compare-and-set, and release.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Either, Layer } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import * as Database from "../../src/layers/state/Database.ts"
import * as VolumesLive from "../../src/layers/volume/VolumesLive.ts"
import { Home } from "../../src/services/Home.ts"
import { Volumes } from "../../src/services/Volumes.ts"
import { makeTempDir } from "../support/fakeEnvironment.ts"
import { requireTool } from "../support/kernel.ts"

const withVolumes = <A, E>(f: (volumes: Volumes["Type"], root: string) => Effect.Effect<A, E>) =>
  Effect.scoped(Effect.gen(function*() {
    requireTool("mke2fs", "e2fsprogs")
    const root = yield* makeTempDir("ma-volumes")
    const layer = VolumesLive.layer.pipe(
      Layer.provideMerge(Database.layer),
      Layer.provideMerge(Home.layer(root))
    )
    return yield* Effect.provide(Effect.flatMap(Volumes, (volumes) => f(volumes, root)), layer)
  }))

describe("VolumesLive", () => {
  it.effect("creates a 0600 ext4 file in a 0700 directory, and refuses a taken or bad name", () =>
    withVolumes((volumes, root) =>
      Effect.gen(function*() {
        const volume = yield* volumes.create("data", 32)
        assert.strictEqual(volume.path, NodePath.join(root, "volumes", "data.ext4"))
        assert.strictEqual(NodeFs.statSync(volume.path).mode & 0o777, 0o600)
        assert.strictEqual(NodeFs.statSync(NodePath.join(root, "volumes")).mode & 0o777, 0o700)
        assert.strictEqual(NodeFs.statSync(volume.path).size, 32 * 1024 * 1024)
        const again = yield* Effect.either(volumes.create("data", 32))
        assert.strictEqual(Either.isLeft(again) && again.left._tag, "Conflict")
        const bad = yield* Effect.either(volumes.create("a/b", 32))
        assert.strictEqual(Either.isLeft(bad) && bad.left._tag, "InvalidInput")
        const tiny = yield* Effect.either(volumes.create("tiny", 1))
        assert.strictEqual(Either.isLeft(tiny) && tiny.left._tag, "InvalidInput")
        const missing = yield* Effect.either(volumes.inspect("nope"))
        assert.strictEqual(Either.isLeft(missing) && missing.left._tag, "NotFound")
        assert.deepStrictEqual((yield* volumes.list).map((v) => v.name), ["data"])
        // No staging file is left beside the volume.
        assert.deepStrictEqual(NodeFs.readdirSync(NodePath.join(root, "volumes")), ["data.ext4"])
      })
    ))

  it.effect("holds a volume for one workspace read-write; a stale holder is replaced only when named", () =>
    withVolumes((volumes) =>
      Effect.gen(function*() {
        yield* volumes.create("data", 32)
        assert.strictEqual((yield* volumes.attach("data", "a", { readOnly: false })).attachedTo, "a")
        assert.strictEqual((yield* volumes.attach("data", "a", { readOnly: false })).attachedTo, "a")
        const second = yield* Effect.either(volumes.attach("data", "b", { readOnly: false }))
        assert.isTrue(Either.isLeft(second))
        if (Either.isLeft(second)) {
          assert.strictEqual(second.left._tag, "Conflict")
          assert.match(second.left.message, /workspace a/)
        }
        const reader = yield* Effect.either(volumes.attach("data", "c", { readOnly: true }))
        assert.strictEqual(Either.isLeft(reader) && reader.left._tag, "Conflict")
        assert.strictEqual(
          (yield* volumes.attach("data", "b", { readOnly: false, replacing: "a" })).attachedTo,
          "b"
        )
        const held = yield* Effect.either(volumes.resize("data", 64))
        assert.strictEqual(Either.isLeft(held) && held.left._tag, "Conflict")
        yield* volumes.detach("data", "a")
        assert.strictEqual(
          (yield* volumes.inspect("data")).attachedTo,
          "b",
          "only the holder's detach counts"
        )
        yield* volumes.release("b")
        assert.strictEqual((yield* volumes.inspect("data")).attachedTo, undefined)
        // Readers share; a writer waits for them, unless the caller found them stale.
        assert.deepStrictEqual((yield* volumes.attach("data", "c", { readOnly: true })).readers, ["c"])
        assert.deepStrictEqual((yield* volumes.attach("data", "e", { readOnly: true })).readers, ["c", "e"])
        const writer = yield* Effect.either(
          volumes.attach("data", "d", { readOnly: false, staleReaders: ["e"] })
        )
        assert.isTrue(Either.isLeft(writer))
        if (Either.isLeft(writer)) assert.match(writer.left.message, /read-only by workspace c/)
        assert.strictEqual(
          (yield* volumes.inspect("data")).attachedTo,
          undefined,
          "the refused writer holds nothing"
        )
        const taken = yield* volumes.attach("data", "d", { readOnly: false, staleReaders: ["c"] })
        assert.strictEqual(taken.attachedTo, "d")
        assert.deepStrictEqual(taken.readers, [])
        const lateReader = yield* Effect.either(volumes.attach("data", "f", { readOnly: true }))
        assert.strictEqual(Either.isLeft(lateReader) && lateReader.left._tag, "Conflict")
        assert.deepStrictEqual(
          (yield* volumes.inspect("data")).readers,
          [],
          "the refused reader is not recorded"
        )
        yield* volumes.release("d")
        yield* volumes.remove("data")
        assert.deepStrictEqual(yield* volumes.list, [])
      })
    ))

  it.effect("resizes offline: grows, and shrinks no further than its content", () =>
    withVolumes((volumes) =>
      Effect.gen(function*() {
        requireTool("resize2fs", "e2fsprogs")
        const volume = yield* volumes.create("data", 32)
        assert.strictEqual((yield* volumes.resize("data", 96)).sizeMiB, 96)
        assert.strictEqual(NodeFs.statSync(volume.path).size, 96 * 1024 * 1024)
        assert.strictEqual((yield* volumes.resize("data", 24)).sizeMiB, 24)
        assert.strictEqual(NodeFs.statSync(volume.path).size, 24 * 1024 * 1024)
        // 20 MB of content: 16 MiB cannot hold it, and the refusal changes nothing.
        requireTool("debugfs", "e2fsprogs")
        const big = NodePath.join(NodePath.dirname(volume.path), "..", "big")
        NodeFs.writeFileSync(big, Buffer.alloc(20_000_000, 1))
        NodeChild.execFileSync("debugfs", ["-w", "-R", `write ${big} big`, volume.path], { stdio: "ignore" })
        const below = yield* Effect.either(volumes.resize("data", 16))
        assert.strictEqual(Either.isLeft(below) && below.left._tag, "ResourceExhausted")
        if (Either.isLeft(below)) assert.match(below.left.message, /content needs \d+ MiB/)
        const now = yield* volumes.inspect("data")
        assert.strictEqual(now.sizeMiB, 24)
        assert.strictEqual(NodeFs.statSync(volume.path).size, 24 * 1024 * 1024)
        assert.strictEqual(now.attachedTo, undefined, "the refused resize lets go of the volume")
      })
    ))
})

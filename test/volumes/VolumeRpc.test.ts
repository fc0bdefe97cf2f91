/**
 * The volume procedures of the RPC group, called through an in-process `MicroagentClient` over the
 * fake backend: the same programs the CLI runs, with classified errors.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Either, Layer } from "effect"
import * as NodeFs from "node:fs"
import { WorkspaceBackends } from "../../src/layers/backends/WorkspaceBackends.ts"
import * as HostServices from "../../src/layers/host/HostServices.ts"
import * as Database from "../../src/layers/state/Database.ts"
import * as SqliteStateStore from "../../src/layers/state/SqliteStateStore.ts"
import * as VolumesLive from "../../src/layers/volume/VolumesLive.ts"
import { MicroagentClient } from "../../src/rpc/Client.ts"
import { layerInProcessClient } from "../../src/rpc/Server.ts"
import { Home } from "../../src/services/Home.ts"
import { killFakeVmms, makeTempDir } from "../support/fakeEnvironment.ts"
import { requireTool } from "../support/kernel.ts"

describe("volume procedures", () => {
  it.scopedLive("create, list, inspect, resize and remove through the client", () =>
    Effect.gen(function*() {
      requireTool("mke2fs", "e2fsprogs")
      const root = yield* makeTempDir("ma-volume-rpc")
      yield* Effect.addFinalizer(() => killFakeVmms(root))
      const layer = layerInProcessClient.pipe(
        Layer.provideMerge(WorkspaceBackends.layer({ defaultBackend: "fake" })),
        Layer.provideMerge(Layer.mergeAll(SqliteStateStore.layer, VolumesLive.layer, HostServices.layer)),
        Layer.provideMerge(Database.layer),
        Layer.provideMerge(Home.layer(root))
      )
      yield* Effect.gen(function*() {
        const client = yield* MicroagentClient
        const made = yield* client.volumeCreate({ name: "data", sizeMiB: 32 })
        assert.strictEqual(made.sizeMiB, 32)
        assert.isTrue(NodeFs.existsSync(made.path))
        const defaulted = yield* client.volumeCreate({ name: "big" })
        assert.strictEqual(defaulted.sizeMiB, 1024)
        assert.deepStrictEqual((yield* client.volumeList()).map((v) => v.name), ["big", "data"])
        assert.strictEqual((yield* client.volumeInspect({ name: "data" })).attachedTo, undefined)
        assert.strictEqual((yield* client.volumeResize({ name: "data", sizeMiB: 48 })).sizeMiB, 48)
        const bad = yield* Effect.either(client.volumeCreate({ name: "a/b" }))
        assert.strictEqual(Either.isLeft(bad) && bad.left._tag, "InvalidInput")
        const missing = yield* Effect.either(client.volumeInspect({ name: "nope" }))
        assert.strictEqual(Either.isLeft(missing) && missing.left._tag, "NotFound")
        assert.deepStrictEqual(yield* client.volumeRemove({ name: "data" }), {
          volume: "data",
          removed: true
        })
        assert.isFalse(NodeFs.existsSync(made.path))
        yield* client.volumeRemove({ name: "big" })
        assert.deepStrictEqual(yield* client.volumeList(), [])
      }).pipe(Effect.provide(layer))
    }))
})

/** The network procedures of the RPC group, through the in-process client on the fake backend. */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { WorkspaceBackends } from "../../src/layers/backends/WorkspaceBackends.ts"
import * as HostServices from "../../src/layers/host/HostServices.ts"
import * as Database from "../../src/layers/state/Database.ts"
import * as SqliteStateStore from "../../src/layers/state/SqliteStateStore.ts"
import * as VolumesLive from "../../src/layers/volume/VolumesLive.ts"
import { MicroagentClient } from "../../src/rpc/Client.ts"
import { layerInProcessClient } from "../../src/rpc/Server.ts"
import { Home } from "../../src/services/Home.ts"

describe("network procedures", () => {
  it.scopedLive("create, list, inspect and remove a network; classified errors cross the boundary", () =>
    Effect.gen(function*() {
      const root = yield* Effect.acquireRelease(
        Effect.sync(() => NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-netrpc-"))),
        (dir) => Effect.sync(() => NodeFs.rmSync(dir, { recursive: true, force: true }))
      )
      const InProcess = layerInProcessClient.pipe(
        Layer.provideMerge(WorkspaceBackends.layer({ defaultBackend: "fake" })),
        Layer.provideMerge(VolumesLive.layer),
        Layer.provideMerge(HostServices.layer),
        Layer.provideMerge(
          SqliteStateStore.layer.pipe(
            Layer.provideMerge(Database.layer),
            Layer.provideMerge(Home.layer(root))
          )
        )
      )
      yield* Effect.gen(function*() {
        const client = yield* MicroagentClient
        const made = yield* client.networkCreate({ name: "lab", subnet: "10.92.0.0/24" })
        assert.deepStrictEqual([made.name, made.subnet, made.gateway], ["lab", "10.92.0.0/24", "10.92.0.1"])
        assert.deepStrictEqual((yield* client.networkList()).map((n) => n.name), ["lab"])
        assert.deepStrictEqual((yield* client.networkInspect({ name: "lab" })).members, [])
        const clash = yield* Effect.flip(client.networkCreate({ name: "other", subnet: "10.92.0.0/25" }))
        assert.strictEqual(clash._tag, "Conflict")
        // The fake backend simulates named networks: the member joins at create.
        const created = yield* client.create({ image: "alpine", name: "member", networks: ["lab"] })
        assert.deepStrictEqual(created.networks, ["lab"])
        const members = (yield* client.networkInspect({ name: "lab" })).members
        assert.deepStrictEqual(members.map((m) => [m.workspace, m.ip]), [["member", "10.92.0.2"]])
        assert.strictEqual((yield* Effect.flip(client.networkRemove({ name: "lab" })))._tag, "Conflict")
        yield* client.delete({ name: "member" })
        assert.deepStrictEqual(yield* client.networkRemove({ name: "lab" }), {
          network: "lab",
          removed: true
        })
        assert.strictEqual((yield* Effect.flip(client.networkInspect({ name: "lab" })))._tag, "NotFound")
      }).pipe(Effect.provide(InProcess))
    }))
})

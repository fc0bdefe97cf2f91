import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { PublishedPort, type Workspace } from "../../src/domain/Workspace.ts"
import { create } from "../../src/programs/Create.ts"
import { networkInspect, networkRemove, resolveNetworkFlags } from "../../src/programs/Network.ts"
import { Networks } from "../../src/services/Networks.ts"
import { StateStore } from "../../src/services/StateStore.ts"
import { fakeEnvironment } from "../support/fakeEnvironment.ts"

describe("Networks on the state store", () => {
  it.scoped("creates networks on the next free /24 or a given subnet, and refuses clashes", () =>
    Effect.gen(function*() {
      const networks = yield* Networks
      assert.strictEqual((yield* networks.create("one")).subnet, "10.89.0.0/24")
      const two = yield* networks.create("two", "10.89.1.0/25")
      assert.deepStrictEqual([two.subnet, two.gateway], ["10.89.1.0/25", "10.89.1.1"])
      assert.strictEqual((yield* networks.create("three")).subnet, "10.89.2.0/24")
      assert.strictEqual((yield* Effect.flip(networks.create("one")))._tag, "Conflict")
      const overlap = yield* Effect.flip(networks.create("four", "10.89.0.128/25"))
      assert.strictEqual(overlap._tag, "Conflict")
      assert.include(overlap.message, "overlaps network one")
      assert.strictEqual((yield* Effect.flip(networks.create("five", "10.0.2.0/24")))._tag, "InvalidInput")
      assert.strictEqual((yield* Effect.flip(networks.create("six", "10.89.9.1/24")))._tag, "InvalidInput")
      assert.strictEqual((yield* Effect.flip(networks.create("Bad Name")))._tag, "InvalidInput")
      assert.strictEqual((yield* Effect.flip(networks.create("isolated")))._tag, "InvalidInput")
      assert.deepStrictEqual((yield* networks.list).map((n) => n.name), ["one", "three", "two"])
      assert.strictEqual((yield* Effect.flip(networks.inspect("missing")))._tag, "NotFound")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scoped("gives networks created by concurrent fibers distinct subnets", () =>
    Effect.gen(function*() {
      const networks = yield* Networks
      const made = yield* Effect.all(
        ["n1", "n2", "n3", "n4", "n5", "n6"].map((name) => networks.create(name)),
        { concurrency: "unbounded" }
      )
      assert.strictEqual(new Set(made.map((n) => n.subnet)).size, 6)
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scoped("gives concurrent joiners distinct lowest addresses, stable on re-join, freed on leave", () =>
    Effect.gen(function*() {
      const networks = yield* Networks
      yield* networks.create("lab", "10.89.5.0/29")
      const joined = yield* Effect.all(
        ["a", "b", "c", "d", "e"].map((ws) => networks.join("lab", ws)),
        { concurrency: "unbounded" }
      )
      assert.deepStrictEqual(
        joined.map((j) => j.ip).sort(),
        ["10.89.5.2", "10.89.5.3", "10.89.5.4", "10.89.5.5", "10.89.5.6"]
      )
      assert.deepStrictEqual(joined[0], { ip: joined[0]!.ip, gateway: "10.89.5.1", prefix: 29 })
      const full = yield* Effect.flip(networks.join("lab", "f"))
      assert.strictEqual(full._tag, "ResourceExhausted")
      const again = yield* networks.join("lab", "c")
      assert.strictEqual(again.ip, joined[2]!.ip)
      yield* networks.leave("lab", "b")
      assert.strictEqual((yield* networks.join("lab", "f")).ip, joined[1]!.ip)
      assert.strictEqual((yield* Effect.flip(networks.remove("lab")))._tag, "Conflict")
      assert.strictEqual((yield* Effect.flip(networks.join("nowhere", "a")))._tag, "NotFound")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scoped("rm --force detaches stopped members from the network and their records", () =>
    Effect.gen(function*() {
      const networks = yield* Networks
      const store = yield* StateStore
      yield* networks.create("lab")
      yield* create({ image: "alpine", name: "member" })
      yield* store.update("member", (ws) => ({ ...ws, networks: ["lab"] }) as Workspace)
      yield* networks.join("lab", "member")
      const report = yield* networkInspect("lab")
      assert.deepStrictEqual(report.members, [{ workspace: "member", ip: "10.89.0.2", state: "prepared" }])
      assert.deepStrictEqual(yield* networkRemove("lab", { force: true }), { network: "lab", removed: true })
      assert.deepStrictEqual((yield* store.get("member")).networks, [])
      assert.deepStrictEqual(yield* networks.list, [])
    }).pipe(Effect.provide(fakeEnvironment)))
})

describe("creating networked workspaces", () => {
  it.scoped("refuses --publish on an isolated workspace and a network that does not exist, making nothing", () =>
    Effect.gen(function*() {
      const store = yield* StateStore
      const ports = [
        new PublishedPort({ hostIp: "127.0.0.1", hostPort: 8080, guestPort: 80, protocol: "tcp" })
      ]
      const isolated = yield* Effect.flip(
        create({ image: "alpine", name: "iso", network: "isolated", ports })
      )
      assert.strictEqual(isolated._tag, "InvalidInput")
      const named = yield* Effect.flip(create({ image: "alpine", name: "named", networks: ["nowhere"] }))
      assert.strictEqual(named._tag, "NotFound")
      assert.deepStrictEqual(yield* store.list, [])
      const published = yield* create({ image: "alpine", name: "web", ports })
      assert.deepStrictEqual(published.ports, ports)
    }).pipe(Effect.provide(fakeEnvironment)))

  it.effect("reads --network as one mode plus network names", () =>
    Effect.gen(function*() {
      assert.deepStrictEqual(yield* resolveNetworkFlags([]), { network: undefined, networks: [] })
      assert.deepStrictEqual(yield* resolveNetworkFlags(["lab", "isolated", "lab", "db"]), {
        network: "isolated",
        networks: ["lab", "db"]
      })
      assert.strictEqual((yield* Effect.flip(resolveNetworkFlags(["user", "isolated"])))._tag, "InvalidInput")
      assert.strictEqual((yield* Effect.flip(resolveNetworkFlags(["host"])))._tag, "InvalidInput")
      assert.strictEqual((yield* Effect.flip(resolveNetworkFlags(["Has Space"])))._tag, "InvalidInput")
    }))
})

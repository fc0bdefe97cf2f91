/**
 * Named networks on the fake backend, where they are simulated: members join at create and again at
 * start (keeping their address), the running members' /etc/hosts (in the fake guests' scratch roots)
 * list each other and forget a member that halts, a deleted member leaves, and a network with members
 * cannot be removed.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { create } from "../../src/programs/Create.ts"
import { remove } from "../../src/programs/Delete.ts"
import { halt } from "../../src/programs/Halt.ts"
import { networkCreate, networkInspect, networkRemove } from "../../src/programs/Network.ts"
import { start } from "../../src/programs/Start.ts"
import { StateStore } from "../../src/services/StateStore.ts"
import { fakeEnvironment } from "../support/fakeEnvironment.ts"

/** The /etc/hosts the fake guest of `name` was given, one `IP NAMES` entry per line (comments dropped). */
const hostsOf = (name: string) =>
  Effect.gen(function*() {
    const workspace = yield* (yield* StateStore).get(name)
    const file = NodePath.join(workspace.rootfsPath, "etc", "hosts")
    if (!NodeFs.existsSync(file)) return []
    return NodeFs.readFileSync(file, "utf8").split("\n").filter((line) =>
      line !== "" && !line.startsWith("#")
    )
      .map((line) => line.replace(/\t/g, " "))
  })

const membersOf = (network: string) =>
  Effect.map(
    networkInspect(network),
    ({ members }) => members.map((m) => `${m.workspace} ${m.ip} ${m.state}`)
  )

describe("named networks on the fake backend", () => {
  it.scopedLive(
    "members join, see each other in /etc/hosts, and leave on halt and delete",
    () =>
      Effect.gen(function*() {
        const lab = yield* networkCreate("lab", "10.93.0.0/24")
        assert.strictEqual(lab.gateway, "10.93.0.1")
        const a = yield* create({ image: "alpine", name: "a", networks: ["lab"] })
        const b = yield* create({ image: "alpine", name: "b", networks: ["lab"] })
        assert.deepStrictEqual([a.networks, b.networks], [["lab"], ["lab"]])
        assert.deepStrictEqual(yield* membersOf("lab"), ["a 10.93.0.2 prepared", "b 10.93.0.3 prepared"])

        yield* start("a")
        assert.deepStrictEqual(yield* hostsOf("a"), [
          "127.0.0.1 localhost",
          "::1 localhost ip6-localhost ip6-loopback",
          "10.93.0.2 a"
        ])
        const events = yield* (yield* StateStore).events("a")
        assert.isTrue(events.some((e) => e.type === "network" && e.detail === "lab 10.93.0.2/24"))

        yield* start("b")
        assert.deepStrictEqual((yield* hostsOf("b")).slice(2), ["10.93.0.3 b", "10.93.0.2 a"])
        assert.deepStrictEqual((yield* hostsOf("a")).slice(2), ["10.93.0.2 a", "10.93.0.3 b"])
        assert.deepStrictEqual(yield* membersOf("lab"), ["a 10.93.0.2 running", "b 10.93.0.3 running"])

        // A running member keeps the network: removing it, even with force, is refused.
        assert.strictEqual((yield* Effect.flip(networkRemove("lab")))._tag, "Conflict")
        assert.strictEqual((yield* Effect.flip(networkRemove("lab", { force: true })))._tag, "Conflict")

        // Halted, b is forgotten by a but keeps its address; started again, it has the same one.
        yield* halt("b")
        assert.deepStrictEqual((yield* hostsOf("a")).slice(2), ["10.93.0.2 a"])
        assert.deepStrictEqual(yield* membersOf("lab"), ["a 10.93.0.2 running", "b 10.93.0.3 halted"])
        yield* start("b")
        assert.deepStrictEqual((yield* hostsOf("a")).slice(2), ["10.93.0.2 a", "10.93.0.3 b"])

        // Deleted, b leaves the network and its address is free again.
        yield* remove("b", { force: true })
        assert.deepStrictEqual(yield* membersOf("lab"), ["a 10.93.0.2 running"])
        assert.deepStrictEqual((yield* hostsOf("a")).slice(2), ["10.93.0.2 a"])
        const c = yield* create({ image: "alpine", name: "c", networks: ["lab"] })
        assert.deepStrictEqual(c.networks, ["lab"])
        assert.deepStrictEqual(yield* membersOf("lab"), ["a 10.93.0.2 running", "c 10.93.0.3 prepared"])

        // With its members stopped, `--force` takes the network off them; then it can go.
        yield* halt("a")
        assert.strictEqual((yield* Effect.flip(networkRemove("lab")))._tag, "Conflict")
        assert.deepStrictEqual(yield* networkRemove("lab", { force: true }), {
          network: "lab",
          removed: true
        })
        assert.deepStrictEqual((yield* (yield* StateStore).get("a")).networks, [])
        assert.strictEqual((yield* Effect.flip(networkInspect("lab")))._tag, "NotFound")
      }).pipe(Effect.provide(fakeEnvironment)),
    60_000
  )
})

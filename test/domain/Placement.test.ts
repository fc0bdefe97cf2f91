import { Either } from "effect"
import { assert, describe, it } from "vitest"
import {
  cachedImageBonus,
  type Candidate,
  demandOf,
  parseCapacity,
  parseHostPort,
  parseLabels,
  place,
  refusal,
  score
} from "../../src/domain/Placement.ts"

const runner = (id: string, overrides: Partial<Candidate> = {}): Candidate => ({
  id,
  alive: true,
  labels: { backend: "qemu" },
  capacity: { memoryMiB: 8192, cpus: 8, workspaces: 10 },
  load: { memoryMiB: 0, cpus: 0, workspaces: 0 },
  images: [],
  ...overrides
})

const demand = { memoryMiB: 512, cpus: 2, image: "alpine:3.20", constraints: {} }

/** A deterministic "random" source: the same sequence every time. */
const sequence = (...values: Array<number>) => {
  let i = 0
  return () => values[i++ % values.length]!
}

describe("placement", () => {
  it("refuses dead, mismatched and full runners, and says why", () => {
    assert.strictEqual(refusal(runner("a"), demand), undefined)
    assert.match(refusal(runner("a", { alive: false }), demand)!, /heart-beating/)
    assert.match(
      refusal(runner("a"), { ...demand, constraints: { backend: "firecracker" } })!,
      /label backend=qemu/
    )
    assert.match(
      refusal(runner("a", { capacity: { memoryMiB: 8192, cpus: 8, workspaces: 0 } }), demand)!,
      /0 of 0 workspaces/
    )
    assert.match(
      refusal(runner("a", { load: { memoryMiB: 7900, cpus: 0, workspaces: 1 } }), demand)!,
      /7900 \+ 512 MiB of 8192 MiB/
    )
    assert.match(refusal(runner("a", { load: { memoryMiB: 0, cpus: 7, workspaces: 1 } }), demand)!, /vCPUs/)
  })

  it("prefers room, then a runner that holds the image", () => {
    const empty = runner("empty")
    const busy = runner("busy", { load: { memoryMiB: 4096, cpus: 4, workspaces: 5 } })
    assert.isAbove(score(empty, demand), score(busy, demand))
    const cached = runner("cached", { images: ["docker.io/library/alpine:3.20"] })
    assert.closeTo(score(cached, demand) - score(empty, demand), cachedImageBonus, 1e-9)
  })

  it("ranks the sample by score and keeps the others as fallbacks; the refused are listed", () => {
    const candidates = [
      runner("a", { load: { memoryMiB: 4096, cpus: 4, workspaces: 4 } }),
      runner("b"),
      runner("c", { capacity: { memoryMiB: 8192, cpus: 8, workspaces: 0 } }),
      runner("d", { load: { memoryMiB: 2048, cpus: 2, workspaces: 2 } })
    ]
    // The whole pool sampled: the order is by score.
    const all = place(candidates, demand, { sample: 10, random: sequence(0) })
    assert.deepStrictEqual(all.order, ["b", "d", "a"])
    assert.deepStrictEqual(all.refused.map((r) => r.id), ["c"])
    // A sample of one: the drawn runner first (random 0.99 draws the last of the pool), the rest ranked.
    const one = place(candidates, demand, { sample: 1, random: sequence(0.99) })
    assert.strictEqual(one.order[0], "d")
    assert.deepStrictEqual(one.order.slice(1), ["b", "a"])
    // Nobody can take it.
    const none = place([runner("x", { alive: false })], demand, { sample: 3, random: Math.random })
    assert.deepStrictEqual(none.order, [])
    assert.strictEqual(none.refused.length, 1)
  })

  it("spreads simultaneous placements over equal runners", () => {
    const candidates = ["a", "b", "c", "d"].map((id) => runner(id))
    const firsts = new Set<string>()
    for (let i = 0; i < 200; i++) {
      firsts.add(place(candidates, demand, { sample: 2, random: Math.random }).order[0]!)
    }
    assert.strictEqual(firsts.size, 4)
  })

  it("takes the demand from the request, its profile or the defaults", () => {
    assert.deepStrictEqual(demandOf({}), { memoryMiB: 512, cpus: 2 })
    assert.deepStrictEqual(demandOf({ profile: "tiny" }), { memoryMiB: 256, cpus: 1 })
    assert.deepStrictEqual(demandOf({ profile: "tiny", memoryMiB: 1024 }), { memoryMiB: 1024, cpus: 1 })
  })
})

describe("cluster flags", () => {
  it("parses labels, capacity and addresses, and refuses the malformed", () => {
    assert.deepStrictEqual(Either.getOrThrow(parseLabels("backend=qemu,zone=a", "--labels")), {
      backend: "qemu",
      zone: "a"
    })
    assert.deepStrictEqual(Either.getOrThrow(parseLabels("", "--labels")), {})
    for (const bad of ["backend", "=x", "a=b c", "a=$(x)"]) {
      assert.isTrue(Either.isLeft(parseLabels(bad, "--labels")), bad)
    }
    assert.deepStrictEqual(Either.getOrThrow(parseCapacity("memory=8192,cpus=8,workspaces=3")), {
      memoryMiB: 8192,
      cpus: 8,
      workspaces: 3
    })
    for (const bad of ["memory=-1", "disk=3", "cpus=1.5", "cpus"]) {
      assert.isTrue(Either.isLeft(parseCapacity(bad)), bad)
    }
    assert.deepStrictEqual(Either.getOrThrow(parseHostPort("10.0.0.5:7400", "--advertise")), {
      host: "10.0.0.5",
      port: 7400
    })
    for (const bad of ["10.0.0.5", ":7400", "host:0", "host:70000", "a b:1"]) {
      assert.isTrue(Either.isLeft(parseHostPort(bad, "--advertise")), bad)
    }
  })
})

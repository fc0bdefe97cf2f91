import { ConfigProvider, Effect } from "effect"
import { assert, describe, it } from "vitest"
import { demandOf } from "../../src/domain/Placement.ts"
import { defaultCpus } from "../../src/domain/Workspace.ts"
import { resolveResources } from "../../src/programs/Create.ts"

const read = (env: Record<string, string>) =>
  Effect.runSync(
    Effect.either(defaultCpus).pipe(
      Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))
    )
  )

describe("MICROAGENT_DEFAULT_CPUS", () => {
  it("is 2 when unset, and the runtime's value when set", () => {
    const unset = read({})
    assert.isTrue(unset._tag === "Right" && unset.right === 2)
    const one = read({ MICROAGENT_DEFAULT_CPUS: "1" })
    assert.isTrue(one._tag === "Right" && one.right === 1)
  })

  it("refuses what is not a whole number from 1 to 256", () => {
    for (const bad of ["0", "257", "1.5", "two", "-1"]) {
      assert.strictEqual(read({ MICROAGENT_DEFAULT_CPUS: bad })._tag, "Left", bad)
    }
  })

  it("applies only where neither --cpus nor a profile says", () => {
    assert.strictEqual(resolveResources({}, 1).cpus, 1)
    assert.strictEqual(resolveResources({ cpus: 3 }, 1).cpus, 3)
    assert.strictEqual(resolveResources({ profile: "small" }, 1).cpus, 2)
    assert.strictEqual(resolveResources({}).cpus, 2)
    // Cluster placement counts the same figure.
    assert.strictEqual(demandOf({}, 1).cpus, 1)
    assert.strictEqual(demandOf({ profile: "small" }, 1).cpus, 2)
    assert.strictEqual(demandOf({}).cpus, 2)
  })
})

import { Either } from "effect"
import { assert, describe, it } from "vitest"
import { parseDuration } from "../../src/domain/Duration.ts"

const seconds = (text: string) => Either.getOrThrow(parseDuration(text))
const reason = (text: string) => Either.flip(parseDuration(text)).pipe(Either.getOrThrow)

describe("parseDuration", () => {
  it("reads Go-style durations and bare seconds", () => {
    assert.strictEqual(seconds("30s"), 30)
    assert.strictEqual(seconds("5m"), 300)
    assert.strictEqual(seconds("1h30m"), 5400)
    assert.strictEqual(seconds("1.5h"), 5400)
    assert.strictEqual(seconds("500ms"), 0.5)
    assert.strictEqual(seconds("2m3s"), 123)
    assert.strictEqual(seconds(".5s"), 0.5)
    assert.strictEqual(seconds("90"), 90)
    assert.strictEqual(seconds("0.25"), 0.25)
    assert.closeTo(seconds("250us"), 0.00025, 1e-12)
    assert.closeTo(seconds("7ns"), 7e-9, 1e-15)
  })

  it("says what is wrong with what it cannot read", () => {
    assert.strictEqual(reason("5x"), `"x" is not a unit (ns, us, ms, s, m or h)`)
    assert.strictEqual(reason("1h5"), `"5" has no unit`)
    assert.strictEqual(reason("-3s"), "it is negative")
    assert.strictEqual(reason(""), "it is empty")
    assert.strictEqual(reason("soon"), `"soon" is not a number with a unit`)
    assert.strictEqual(reason("5 m"), `" m" is not a unit (ns, us, ms, s, m or h)`)
  })
})

import { assert, describe, it } from "@effect/vitest"
import { nameProblem, reservedNames } from "../../src/domain/Workspace.ts"

describe("workspace names", () => {
  it("accepts the documented grammar", () => {
    for (const name of ["a", "w1", "A.b_c-d", "9lives", "x".repeat(63)]) {
      assert.isUndefined(nameProblem(name), name)
    }
  })
  it("rejects what cannot be a name, saying why", () => {
    assert.include(nameProblem("")!, "empty")
    assert.include(nameProblem("-x")!, "must start with a letter or digit")
    assert.include(nameProblem(".hidden")!, "must start")
    assert.include(nameProblem("a/b")!, "only letters")
    assert.include(nameProblem("x".repeat(64))!, "longer than 63")
    assert.include(nameProblem("m2*")!, "glob")
    assert.include(nameProblem("a b")!, "only letters")
  })
  it("rejects reserved names", () => {
    for (const name of reservedNames) assert.include(nameProblem(name)!, "reserved", name)
  })
})

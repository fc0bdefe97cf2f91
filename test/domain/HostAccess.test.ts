import { assert, describe, it } from "vitest"
import {
  envPatternProblem,
  intersectRoots,
  isWithin,
  matchesEnvPattern
} from "../../src/domain/HostAccess.ts"

describe("host access rules", () => {
  it("a path is within a root only below it, never beside it", () => {
    assert.isTrue(isWithin("/srv/a", "/srv/a"))
    assert.isTrue(isWithin("/srv/a", "/srv/a/b/c"))
    assert.isFalse(isWithin("/srv/a", "/srv/ab"))
    assert.isFalse(isWithin("/srv/a", "/srv"))
    assert.isFalse(isWithin("/srv/a", "/srv/a/../b"))
    assert.isTrue(isWithin("/", "/etc"))
  })

  it("intersects roots: the inner one of each nested pair, nothing for disjoint ones", () => {
    assert.deepStrictEqual(intersectRoots(["/home/me"], ["/home/me/project"]), ["/home/me/project"])
    assert.deepStrictEqual(intersectRoots(["/home/me/project"], ["/home/me"]), ["/home/me/project"])
    assert.deepStrictEqual(intersectRoots(["/a", "/b"], ["/b/x", "/c", "/a"]), ["/a", "/b/x"])
    assert.deepStrictEqual(intersectRoots(["/a"], ["/ab"]), [])
    assert.deepStrictEqual(intersectRoots([], ["/a"]), [])
  })

  it("matches environment variable patterns whole, with * for any run of name characters", () => {
    assert.isTrue(matchesEnvPattern("APP_*", "APP_KEY"))
    assert.isTrue(matchesEnvPattern("APP_*", "APP_"))
    assert.isFalse(matchesEnvPattern("APP_*", "XAPP_KEY"))
    assert.isFalse(matchesEnvPattern("APP_*", "APPKEY"))
    assert.isTrue(matchesEnvPattern("TOKEN", "TOKEN"))
    assert.isFalse(matchesEnvPattern("TOKEN", "TOKEN2"))
    assert.isTrue(matchesEnvPattern("*_TOKEN", "GITHUB_TOKEN"))
    assert.isUndefined(envPatternProblem("APP_*"))
    assert.isString(envPatternProblem("A.B"))
    assert.isString(envPatternProblem("$(x)"))
  })
})

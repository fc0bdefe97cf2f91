/**
 * `--egress-policy FILE`: YAML or JSON with `allow` and `passthrough` lists, decoded strictly, each
 * entry checked and normalised as `--egress-allow` is.
 */
import { Either } from "effect"
import { assert, describe, it } from "vitest"
import { decodeEgressPolicyFile } from "../../src/domain/Egress.ts"

const ok = (text: string) => {
  const decoded = decodeEgressPolicyFile(text, "policy.yaml")
  if (Either.isLeft(decoded)) assert.fail(decoded.left.message)
  return decoded.right
}

const error = (text: string) => {
  const decoded = decodeEgressPolicyFile(text, "policy.yaml")
  if (Either.isRight(decoded)) assert.fail(`accepted: ${JSON.stringify(decoded.right)}`)
  return decoded.left.message
}

describe("egress policy files", () => {
  it("reads allow and passthrough from YAML or JSON, normalised", () => {
    assert.deepStrictEqual(ok("allow: [API.Example.com., .pypi.org]\npassthrough:\n  - 10.0.0.0/8:443\n"), {
      allow: ["api.example.com", ".pypi.org"],
      passthrough: ["10.0.0.0/8:443"]
    })
    assert.deepStrictEqual(ok('{"allow": ["a.example"]}'), { allow: ["a.example"], passthrough: [] })
    assert.deepStrictEqual(ok(""), { allow: [], passthrough: [] })
  })

  it("refuses other keys, malformed entries and text that is not YAML", () => {
    assert.include(error("allow: [a.example]\ndeny: [b.example]\n"), "deny")
    assert.include(error("allow: [a.example]\ndeny: [b.example]\n"), "policy.yaml")
    assert.include(error("allow: ['http://a.example/']\n"), "is not host, .suffix")
    assert.include(error("allow: [10.0.0.300]\n"), "octet over 255")
    assert.include(error("allow: a.example\n"), "policy.yaml")
    assert.include(error("allow: [a\n"), "not valid YAML or JSON")
  })
})

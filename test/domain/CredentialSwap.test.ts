/**
 * `mitm`'s credential swaps: the `--cred-swap PROVIDER[=REF]` shorthand and `--egress-swap-config`
 * files, decoded strictly, values only ever as references; and which hosts a swap's domains cover.
 */
import { Either } from "effect"
import { assert, describe, it } from "vitest"
import { decodeSwapConfig, hostMatches, parseCredSwap } from "../../src/domain/Egress.ts"

const swapOk = (text: string) => {
  const parsed = parseCredSwap(text)
  if (Either.isLeft(parsed)) assert.fail(parsed.left.message)
  return parsed.right
}
const configOk = (text: string) => {
  const decoded = decodeSwapConfig(text, "swaps.yaml")
  if (Either.isLeft(decoded)) assert.fail(decoded.left.message)
  return decoded.right
}
const configError = (text: string) => {
  const decoded = decodeSwapConfig(text, "swaps.yaml")
  if (Either.isRight(decoded)) assert.fail(`accepted: ${JSON.stringify(decoded.right)}`)
  return decoded.left.message
}

describe("credential swaps", () => {
  it("expands a built-in provider, with its default or given reference", () => {
    const openai = swapOk("openai")
    assert.deepStrictEqual(openai.secret, { name: "OPENAI_API_KEY", source: "env:OPENAI_API_KEY" })
    assert.deepStrictEqual(openai.swap.domains, ["api.openai.com"])
    assert.strictEqual(openai.swap.header, "authorization")
    assert.strictEqual(openai.swap.format, "Bearer {key}")
    const anthropic = swapOk("Anthropic=file:/run/keys/anthropic")
    assert.deepStrictEqual(anthropic.secret, {
      name: "ANTHROPIC_API_KEY",
      source: "file:/run/keys/anthropic"
    })
    assert.strictEqual(anthropic.swap.header, "x-api-key")
    assert.strictEqual(anthropic.swap.format, "{key}")
  })

  it("refuses unknown providers and values written out", () => {
    assert.isTrue(Either.isLeft(parseCredSwap("acme")))
    const literal = parseCredSwap("openai=sk-123")
    assert.isTrue(Either.isLeft(literal))
    if (Either.isLeft(literal)) assert.include(literal.left.message, "env:VAR or file:PATH")
  })

  it("reads static swaps from a file, defaults and all", () => {
    const [swap] = configOk(
      "swaps:\n  internal-api:\n    type: static\n    domains: [API.Internal.example., .svc.example]\n    key_ref: env:INTERNAL_KEY\n"
    )
    assert.deepStrictEqual(swap!.swap.domains, ["api.internal.example", ".svc.example"])
    assert.strictEqual(swap!.swap.header, "authorization")
    assert.strictEqual(swap!.swap.format, "Bearer {key}")
    assert.deepStrictEqual(swap!.secret, { name: "SWAP_INTERNAL_API", source: "env:INTERNAL_KEY" })
  })

  it("refuses other keys, unbuilt types, literal keys, formats without {key}, bad domains and headers", () => {
    assert.include(
      configError("swaps:\n  a:\n    domains: [x.example]\n    key_ref: env:K\n    extra: 1\n"),
      "extra"
    )
    assert.include(
      configError("swaps:\n  a:\n    type: oauth2-cc\n    domains: [x.example]\n    key_ref: env:K\n"),
      "not built"
    )
    assert.include(
      configError("swaps:\n  a:\n    domains: [x.example]\n    key_ref: sk-live\n"),
      "never the value"
    )
    assert.include(
      configError("swaps:\n  a:\n    domains: [x.example]\n    format: Bearer\n    key_ref: env:K\n"),
      "{key}"
    )
    assert.include(
      configError("swaps:\n  a:\n    domains: ['http://x.example']\n    key_ref: env:K\n"),
      "not a host"
    )
    assert.include(
      configError("swaps:\n  a:\n    domains: [x.example]\n    header: 'bad header'\n    key_ref: env:K\n"),
      "header"
    )
    assert.include(configError("swaps: [\n"), "not valid YAML or JSON")
  })

  it("matches hosts: exact names, and .suffix for the apex and its subdomains", () => {
    assert.isTrue(hostMatches(["api.openai.com"], "API.OpenAI.com."))
    assert.isFalse(hostMatches(["api.openai.com"], "evil-api.openai.com"))
    assert.isTrue(hostMatches([".svc.example"], "svc.example"))
    assert.isTrue(hostMatches([".svc.example"], "a.b.svc.example"))
    assert.isFalse(hostMatches([".svc.example"], "notsvc.example"))
  })
})

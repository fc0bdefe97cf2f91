import { Effect, Either } from "effect"
import { assert, describe, it } from "vitest"
import { parseGgufHeader } from "../../src/domain/Gguf.ts"
import { canonicalModelRef, parseModelRef, resolveUrl } from "../../src/domain/ModelRef.ts"
import { tinyGguf } from "../support/gguf.ts"

const parse = (s: string) => Effect.runSync(Effect.either(parseModelRef(s)))
const canonical = (s: string) => canonicalModelRef(Either.getOrThrow(parse(s)))

describe("parseModelRef", () => {
  it("reads every accepted spelling into one canonical form", () => {
    assert.strictEqual(canonical("hf.co/org/repo/m.gguf"), "hf.co/org/repo@main/m.gguf")
    assert.strictEqual(
      canonical("huggingface.co/org/repo@v1/dir/m.Q4.gguf"),
      "hf.co/org/repo@v1/dir/m.Q4.gguf"
    )
    assert.strictEqual(canonical("org/repo/m.gguf@abc123"), "hf.co/org/repo@abc123/m.gguf")
    assert.strictEqual(
      canonical("https://huggingface.co/org/repo/resolve/abc/dir/m.gguf?download=true"),
      "hf.co/org/repo@abc/dir/m.gguf"
    )
    assert.strictEqual(
      resolveUrl("http://127.0.0.1:9/", Either.getOrThrow(parse("hf.co/o/r@v1/d/m.gguf"))),
      "http://127.0.0.1:9/o/r/resolve/v1/d/m.gguf"
    )
  })

  it("refuses malformed references with InvalidInput naming the problem", () => {
    const cases: Array<[string, string]> = [
      ["", "empty reference"],
      ["hf.co/org/repo", "needs ORG/REPO/FILE.gguf"],
      ["hf.co//repo/m.gguf", "empty organisation"],
      ["hf.co/org/../m.gguf", "repository may not be"],
      ["hf.co/org/repo/../m.gguf", "path segment may not be"],
      ["hf.co/org/repo/m.bin", "must be a .gguf file"],
      ["hf.co/org/repo@/m.gguf", "empty revision"],
      ["https://huggingface.co/org/repo/blob/main/m.gguf", "resolve"]
    ]
    for (const [input, why] of cases) {
      const result = parse(input)
      assert.isTrue(Either.isLeft(result), input)
      if (Either.isLeft(result)) {
        assert.strictEqual(result.left._tag, "InvalidInput")
        assert.include(result.left.message, why, input)
      }
    }
  })
})

describe("parseGgufHeader", () => {
  it("reads version, tensors, architecture, name and context length", () => {
    const info = parseGgufHeader(tinyGguf())
    assert.deepStrictEqual(info, {
      version: 3,
      tensorCount: 1,
      metadataCount: 7,
      architecture: "llama",
      name: "tiny-test",
      contextLength: 256
    })
  })

  it("refuses bad magic, bad versions, truncation and hostile counts without allocating", () => {
    const refused = (bytes: Uint8Array, why: string) =>
      assert.throws(() => parseGgufHeader(bytes), new RegExp(why))
    refused(tinyGguf({ magic: "GGML" }), "bad magic")
    refused(tinyGguf({ version: 9 }), "version 9")
    refused(tinyGguf().subarray(0, 60), "truncated")
    refused(tinyGguf({ tensorCount: 1n << 60n }), "tensor count")
    refused(tinyGguf({ metadataCount: (1n << 64n) - 1n }), "metadata count")
    const hugeString = Buffer.from(tinyGguf())
    // general.architecture's value length (after magic, version, counts, key and type) set to 2^62
    hugeString.writeBigUInt64LE(1n << 62n, 24 + 8 + "general.architecture".length + 4)
    refused(hugeString, "exceeds")
  })
})

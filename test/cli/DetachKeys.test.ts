/**
 * The detach keys of `connect`: parsing `--detach-keys`, and finding the sequence in keystrokes that
 * may split it across reads without eating what only looked like its start.
 */
import { Effect, Either } from "effect"
import { assert, describe, it } from "vitest"
import { detachScanner, parseDetachKeys } from "../../src/cli/connect.ts"

const parse = (spec: string) => Effect.runSync(Effect.either(parseDetachKeys(spec)))
const bytes = (...xs: Array<number>) => Uint8Array.from(xs)

describe("--detach-keys", () => {
  it("parses control keys and plain characters", () => {
    assert.deepStrictEqual(Either.getOrThrow(parse("ctrl-]")), bytes(0x1d))
    assert.deepStrictEqual(Either.getOrThrow(parse("ctrl-p,ctrl-q")), bytes(0x10, 0x11))
    assert.deepStrictEqual(Either.getOrThrow(parse("ctrl-@,ctrl-\\,q")), bytes(0x00, 0x1c, 0x71))
  })

  it("refuses what no terminal sends, as a usage error", () => {
    for (const spec of ["ctrl-1", "", "ctrl-", "ab", "é"]) {
      const result = parse(spec)
      assert.isTrue(Either.isLeft(result), spec)
      if (Either.isLeft(result)) assert.strictEqual(result.left._tag, "InvalidInput")
    }
  })
})

describe("the detach scanner", () => {
  it("passes keystrokes through and detaches on the sequence", () => {
    const scan = detachScanner(bytes(0x1d))
    assert.deepStrictEqual(scan(bytes(0x61, 0x62)), { pass: bytes(0x61, 0x62), detach: false })
    assert.deepStrictEqual(scan(bytes(0x63, 0x1d, 0x64)), { pass: bytes(0x63), detach: true })
  })

  it("finds a two-key sequence split across reads", () => {
    const scan = detachScanner(bytes(0x10, 0x11))
    assert.deepStrictEqual(scan(bytes(0x61, 0x10)), { pass: bytes(0x61), detach: false })
    assert.deepStrictEqual(scan(bytes(0x11)), { pass: bytes(), detach: true })
  })

  it("gives back a held key when the sequence breaks", () => {
    const scan = detachScanner(bytes(0x10, 0x11))
    assert.deepStrictEqual(scan(bytes(0x10)), { pass: bytes(), detach: false })
    assert.deepStrictEqual(scan(bytes(0x78)), { pass: bytes(0x10, 0x78), detach: false })
    // A repeated first key: the first is a keystroke, the second may start the sequence.
    assert.deepStrictEqual(scan(bytes(0x10, 0x10)), { pass: bytes(0x10), detach: false })
    assert.deepStrictEqual(scan(bytes(0x11)), { pass: bytes(), detach: true })
  })
})

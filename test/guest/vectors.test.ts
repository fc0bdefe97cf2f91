/**
 * The TypeScript codec against the shared vectors (guest/vectors/frames.jsonl), which the C
 * runner (`make -C guest test`) checks too.
 */
import { assert, describe, it } from "@effect/vitest"
import { Either, Schema } from "effect"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import {
  decodeFrame,
  frameBytes,
  FrameFromBytes,
  type Message
} from "../../src/layers/guest/internal/messages.ts"
import { encodeHeader, FrameDecoder, MessageType, WireError } from "../../src/layers/guest/internal/wire.ts"
import { guestDir } from "./agent.ts"
import { hex, summarize, toJson } from "./summary.ts"

interface Vector {
  readonly name: string
  readonly hex: string
  readonly stream?: number
  readonly message?: unknown
  readonly summary?: string
  readonly canonical?: boolean
  readonly reject?: string
}

const vectors: Array<Vector> = readFileSync(join(guestDir, "vectors/frames.jsonl"), "utf8")
  .split("\n")
  .filter((l) => l.trim() !== "")
  .map((l) => JSON.parse(l))

/** The JSON form back to a message: hex strings become bytes where the schema has bytes. */
const fromJson = (m: any): Message => {
  const b = (h: string) => new Uint8Array(Buffer.from(h, "hex"))
  if ("data" in m) return { ...m, data: b(m.data) }
  if (m._tag === "Freshen" && m.entropy !== undefined) return { ...m, entropy: b(m.entropy) }
  if (m._tag === "Secrets") {
    return { ...m, secrets: m.secrets.map((s: any) => ({ name: s.name, value: b(s.value) })) }
  }
  return m
}

describe("shared frame vectors", () => {
  it("has a healthy set", () => {
    assert.isAtLeast(vectors.filter((v) => v.reject === undefined).length, 30)
    assert.isAtLeast(vectors.filter((v) => v.reject !== undefined).length, 20)
  })

  for (const v of vectors) {
    it(v.name, () => {
      const bytes = new Uint8Array(Buffer.from(v.hex, "hex"))
      const decoded = decodeFrame(bytes)
      if (v.reject !== undefined) {
        assert.isTrue(Either.isLeft(decoded), "should be rejected")
        if (Either.isLeft(decoded)) assert.strictEqual(decoded.left.code, v.reject)
        assert.isTrue(Either.isLeft(Schema.decodeEither(FrameFromBytes)(bytes)))
        return
      }
      assert.isTrue(Either.isRight(decoded), Either.isLeft(decoded) ? decoded.left.message : "")
      if (Either.isLeft(decoded)) return
      assert.strictEqual(decoded.right.stream, v.stream)
      assert.deepStrictEqual(toJson(decoded.right.message), v.message)
      assert.strictEqual(summarize(decoded.right.stream, decoded.right.message), v.summary)
      const viaSchema = Schema.decodeEither(FrameFromBytes)(bytes)
      assert.isTrue(Either.isRight(viaSchema))
      if (v.canonical !== false) {
        assert.strictEqual(hex(frameBytes(v.stream!, fromJson(v.message))), v.hex)
        assert.strictEqual(hex(Schema.encodeSync(FrameFromBytes)(decoded.right)), v.hex)
      }
    })
  }
})

describe("incremental frame decoder", () => {
  const frames = vectors.filter((v) => v.reject === undefined).map((v) => Buffer.from(v.hex, "hex"))
  const stream = Buffer.concat(frames)

  it("reassembles frames split at every byte boundary", () => {
    for (const size of [1, 2, 5, 12, 13, 64, 1000]) {
      const d = new FrameDecoder()
      const out: Array<unknown> = []
      for (let off = 0; off < stream.length; off += size) {
        out.push(...d.push(stream.subarray(off, off + size)))
      }
      assert.strictEqual(out.length, frames.length)
      assert.isTrue(out.every((f) => !(f instanceof WireError)))
    }
  })

  it("reassembles frames from random splits, with the caller reusing its buffer", () => {
    let seed = 42
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31)
    const scratch = new Uint8Array(4096)
    for (let round = 0; round < 200; round++) {
      const d = new FrameDecoder()
      const out: Array<unknown> = []
      for (let off = 0; off < stream.length;) {
        const n = Math.min(stream.length - off, 1 + Math.floor(rand() * 300))
        scratch.set(stream.subarray(off, off + n))
        out.push(...d.push(scratch.subarray(0, n)))
        scratch.fill(0xee) // whatever the decoder kept must be its own copy
        off += n
      }
      assert.strictEqual(out.length, frames.length)
      out.forEach((f, i) => {
        assert.isFalse(f instanceof WireError)
        assert.strictEqual(hex((f as { payload: Uint8Array }).payload), hex(frames[i]!.subarray(12)))
      })
    }
  })

  it("skips an oversized payload without buffering it and carries on", () => {
    const d = new FrameDecoder()
    const big = encodeHeader(MessageType.Stdout, 4, 2 * 1024 * 1024)
    const out = [
      ...d.push(big),
      ...d.push(new Uint8Array(1024 * 1024)),
      ...d.push(Buffer.concat([new Uint8Array(1024 * 1024), frames[0]!]))
    ]
    assert.strictEqual(out.length, 2)
    assert.isTrue(out[0] instanceof WireError && out[0].code === "frame_too_large" && out[0].stream === 4)
    assert.isFalse(out[1] instanceof WireError)
  })

  it("stops at a bad magic", () => {
    const d = new FrameDecoder()
    const out = d.push(Buffer.concat([frames[0]!, Buffer.from("garbage-garbage")]))
    assert.strictEqual(out.length, 2)
    assert.isTrue(out[1] instanceof WireError && out[1].code === "bad_magic")
  })
})

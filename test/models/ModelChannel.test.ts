import { assert, describe, it } from "vitest"
import { dataFrames, encodeFrame, FrameReader, FrameType, maxPayload } from "../../src/bridge/ModelChannel.ts"

describe("the model channel's frames", () => {
  it("round-trip across arbitrary splits, large data in frames of at most 64 KiB", () => {
    const big = Buffer.alloc(maxPayload * 2 + 5, 7)
    const wire = Buffer.concat([
      encodeFrame(FrameType.open, 1),
      ...dataFrames(1, big),
      encodeFrame(FrameType.eof, 1)
    ])
    assert.strictEqual(dataFrames(1, big).length, 3)
    const reader = new FrameReader()
    const frames = []
    for (let off = 0; off < wire.length; off += 1000) {
      frames.push(...reader.push(wire.subarray(off, off + 1000)))
    }
    assert.deepStrictEqual(frames.map((f) => f.type), [1, 2, 2, 2, 3])
    assert.deepStrictEqual(Buffer.concat(frames.filter((f) => f.type === 2).map((f) => f.payload)), big)
    assert.isTrue(frames.every((f) => f.id === 1))
  })

  it("refuses a bad magic, an unknown type and an oversized length", () => {
    const bad = (mutate: (frame: Buffer) => void) => {
      const frame = encodeFrame(FrameType.data, 9, Buffer.from("x"))
      mutate(frame)
      assert.throws(() => new FrameReader().push(frame), /malformed/)
    }
    bad((f) => (f[0] = 0))
    bad((f) => (f[1] = 9))
    bad((f) => f.writeUInt32BE(maxPayload + 1, 6))
  })
})

/**
 * The model channel's framing (docs/protocol.md, "Model channel"), the host's half of
 * guest/src/modelfwd.c: magic 0x6d, type, connection id (u32 BE), length (u32 BE), payload.
 */
const frameMagic = 0x6d
export const FrameType = { open: 1, data: 2, eof: 3, close: 4 } as const
export type FrameType = (typeof FrameType)[keyof typeof FrameType]
const headerSize = 10
export const maxPayload = 64 * 1024

export interface Frame {
  readonly type: FrameType
  readonly id: number
  readonly payload: Buffer
}

export const encodeFrame = (type: FrameType, id: number, payload?: Uint8Array): Buffer => {
  const length = payload?.length ?? 0
  const frame = Buffer.allocUnsafe(headerSize + length)
  frame[0] = frameMagic
  frame[1] = type
  frame.writeUInt32BE(id, 2)
  frame.writeUInt32BE(length, 6)
  if (payload !== undefined) frame.set(payload, headerSize)
  return frame
}

/** DATA frames for any number of bytes (each at most maxPayload). */
export const dataFrames = (id: number, bytes: Uint8Array): Array<Buffer> => {
  const frames: Array<Buffer> = []
  for (let off = 0; off < bytes.length; off += maxPayload) {
    frames.push(encodeFrame(FrameType.data, id, bytes.subarray(off, off + maxPayload)))
  }
  return frames
}

/** An incremental reader: feed bytes, get whole frames; a malformed header throws. */
export class FrameReader {
  private buffered: Buffer = Buffer.alloc(0)

  push(bytes: Buffer): Array<Frame> {
    this.buffered = this.buffered.length === 0 ? bytes : Buffer.concat([this.buffered, bytes])
    const frames: Array<Frame> = []
    let off = 0
    while (this.buffered.length - off >= headerSize) {
      const type = this.buffered[off + 1]!
      const length = this.buffered.readUInt32BE(off + 6)
      if (
        this.buffered[off] !== frameMagic || type < FrameType.open || type > FrameType.close
        || length > maxPayload
      ) {
        throw new Error("a malformed frame on the model channel")
      }
      if (this.buffered.length - off < headerSize + length) break
      frames.push({
        type: type as FrameType,
        id: this.buffered.readUInt32BE(off + 2),
        payload: Buffer.from(this.buffered.subarray(off + headerSize, off + headerSize + length))
      })
      off += headerSize + length
    }
    this.buffered = this.buffered.subarray(off)
    return frames
  }
}

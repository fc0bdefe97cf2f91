/**
 * A decoder for the LZ4 "legacy" frame, the format Linux uses for LZ4-compressed kernels: a magic
 * word, then blocks of (u32 compressed size, LZ4 block) that each decode to at most 8 MiB. The kernel
 * build appends the uncompressed size as a trailing u32, which the `lz4` tool rejects (exit 1); here
 * any trailing word that cannot be a block ends the stream.
 */

const LEGACY_MAGIC = 0x184c2102
const LEGACY_BLOCK_MAX = 8 * 1024 * 1024

const isLz4Legacy = (bytes: Uint8Array): boolean =>
  bytes.length >= 4 && bytes[0] === 0x02 && bytes[1] === 0x21 && bytes[2] === 0x4c && bytes[3] === 0x18

/** Decodes one LZ4 block into `out` at `outPos`; returns the new output position. */
const decodeBlock = (
  src: Uint8Array,
  start: number,
  end: number,
  out: Uint8Array,
  outPos: number
): number => {
  let ip = start
  let op = outPos
  while (ip < end) {
    const token = src[ip++]!
    let literals = token >>> 4
    if (literals === 15) {
      let b: number
      do {
        b = src[ip++]!
        literals += b
      } while (b === 255)
    }
    if (ip + literals > end || op + literals > out.length) throw new Error("lz4: literal run past the end")
    out.set(src.subarray(ip, ip + literals), op)
    ip += literals
    op += literals
    // The last sequence of a block has literals only.
    if (ip >= end) break
    const offset = src[ip]! | (src[ip + 1]! << 8)
    ip += 2
    // Legacy blocks are independent: a match never reaches into an earlier block.
    if (offset === 0 || offset > op - outPos) throw new Error("lz4: bad match offset")
    let length = token & 15
    if (length === 15) {
      let b: number
      do {
        b = src[ip++]!
        length += b
      } while (b === 255)
    }
    length += 4
    if (op + length > out.length) throw new Error("lz4: match past the end of the output")
    let from = op - offset
    if (offset >= length) {
      out.copyWithin(op, from, from + length)
      op += length
    } else {
      // Overlapping copy repeats the last `offset` bytes.
      for (let i = 0; i < length; i++) out[op++] = out[from++]!
    }
  }
  return op
}

/** Decodes a whole legacy-frame stream (frames may be concatenated). */
export const decodeLz4Legacy = (src: Uint8Array): Uint8Array => {
  const view = new DataView(src.buffer, src.byteOffset, src.byteLength)
  // First pass: find the blocks, so that the output is allocated once.
  const blocks: Array<readonly [number, number]> = []
  let pos = 0
  if (!isLz4Legacy(src)) throw new Error("lz4: not a legacy frame")
  pos = 4
  while (pos + 4 <= src.length) {
    const size = view.getUint32(pos, true)
    if (size === LEGACY_MAGIC) {
      pos += 4
      continue
    }
    // A trailing size word (or anything else that does not fit) ends the stream.
    if (size === 0 || pos + 4 + size > src.length) break
    blocks.push([pos + 4, pos + 4 + size])
    pos += 4 + size
  }
  if (blocks.length === 0) throw new Error("lz4: no blocks")
  const out = new Uint8Array(blocks.length * LEGACY_BLOCK_MAX)
  let op = 0
  for (const [start, end] of blocks) op = decodeBlock(src, start, end, out, op)
  return out.subarray(0, op)
}

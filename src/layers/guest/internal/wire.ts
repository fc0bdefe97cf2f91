/**
 * Byte-level framing of the guest channel (docs/protocol.md §1–2): the 12-byte header, TLV
 * fields and an incremental frame decoder. Plain functions: this is the hot path.
 */

export const PROTOCOL_VERSION = 1
export const HEADER_SIZE = 12
export const MAX_PAYLOAD = 1024 * 1024
const HARD_LIMIT = 16 * 1024 * 1024
const MAGIC0 = 0x4d
const MAGIC1 = 0x41

export const MessageType = {
  Hello: 0x01,
  Ping: 0x02,
  Pong: 0x03,
  Error: 0x04,
  Ok: 0x05,
  Window: 0x06,
  Exec: 0x10,
  Stdin: 0x11,
  Eof: 0x12,
  Stdout: 0x13,
  Stderr: 0x14,
  Exit: 0x15,
  Signal: 0x16,
  Resize: 0x17,
  Cancel: 0x18,
  Started: 0x19,
  FilePut: 0x20,
  FileGet: 0x21,
  FileInfo: 0x22,
  FileData: 0x23,
  Secrets: 0x30,
  Freshen: 0x31,
  Shutdown: 0x40
} as const
export type MessageTag = keyof typeof MessageType

const tagByType = new Map<number, MessageTag>(
  Object.entries(MessageType).map(([tag, type]) => [type, tag as MessageTag])
)
export const tagOfType = (type: number): MessageTag | undefined => tagByType.get(type)

/** Messages whose payload is raw bytes rather than TLV fields. */
export const rawTags: ReadonlySet<MessageTag> = new Set([
  "Ping",
  "Pong",
  "Stdin",
  "Stdout",
  "Stderr",
  "FileData"
])

/** A failure to parse, named with the protocol's error codes (§7). */
export class WireError {
  readonly _tag = "WireError"
  constructor(
    readonly code: "bad_magic" | "frame_too_large" | "bad_frame" | "unknown_type" | "bad_message",
    readonly message: string,
    /** Stream of the offending frame, when the header could be read. */
    readonly stream?: number
  ) {}
}

export interface RawFrame {
  readonly type: number
  readonly stream: number
  readonly payload: Uint8Array
}

export const encodeHeader = (type: number, stream: number, length: number): Uint8Array => {
  const h = new Uint8Array(HEADER_SIZE)
  const v = new DataView(h.buffer)
  h[0] = MAGIC0
  h[1] = MAGIC1
  h[2] = type
  h[3] = 0
  v.setUint32(4, stream, true)
  v.setUint32(8, length, true)
  return h
}

export const encodeFrame = (type: number, stream: number, payload: Uint8Array): Uint8Array => {
  const out = new Uint8Array(HEADER_SIZE + payload.length)
  out.set(encodeHeader(type, stream, payload.length), 0)
  out.set(payload, HEADER_SIZE)
  return out
}

/**
 * Checks a complete header. Connection-level failures (`bad_magic`, length over the hard limit)
 * come back with `fatal: true`; the rest concern the frame alone.
 */
export const checkHeader = (
  h: Uint8Array,
  offset = 0
): { type: number; stream: number; length: number; error?: WireError; fatal?: boolean } => {
  const v = new DataView(h.buffer, h.byteOffset + offset, HEADER_SIZE)
  const type = h[offset + 2]!
  const flags = h[offset + 3]!
  const stream = v.getUint32(4, true)
  const length = v.getUint32(8, true)
  if (h[offset] !== MAGIC0 || h[offset + 1] !== MAGIC1) {
    return { type, stream, length, error: new WireError("bad_magic", "bad frame magic"), fatal: true }
  }
  if (length > HARD_LIMIT) {
    return {
      type,
      stream,
      length,
      error: new WireError("frame_too_large", `frame length ${length} beyond 16 MiB`),
      fatal: true
    }
  }
  if (length > MAX_PAYLOAD) {
    return {
      type,
      stream,
      length,
      error: new WireError("frame_too_large", `payload of ${length} bytes`, stream)
    }
  }
  if (flags !== 0) {
    return { type, stream, length, error: new WireError("bad_frame", "non-zero flags", stream) }
  }
  if (!tagByType.has(type)) {
    return {
      type,
      stream,
      length,
      error: new WireError("unknown_type", `unknown type 0x${type.toString(16)}`, stream)
    }
  }
  return { type, stream, length }
}

/** A private copy; Node's unsafe allocation skips zero-filling memory that is overwritten at once. */
const copyOf = (bytes: Uint8Array): Uint8Array => {
  const out = Buffer.allocUnsafe(bytes.length)
  out.set(bytes)
  return out
}

/**
 * Incremental decoder: feed socket chunks, get whole frames. Holds at most one partial frame
 * (≤ 1 MiB + header); oversized payloads are skipped without being buffered. Everything it keeps
 * or returns is copied, so the caller may reuse the chunk's memory (one read buffer per socket).
 */
export class FrameDecoder {
  private pending = new Uint8Array(HEADER_SIZE)
  private pendingLen = 0
  private skip = 0
  private failed = false

  push(chunk: Uint8Array): Array<RawFrame | WireError> {
    const out: Array<RawFrame | WireError> = []
    if (this.failed) return out
    let data = chunk
    while (data.length > 0) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, data.length)
        this.skip -= n
        data = data.subarray(n)
        continue
      }
      if (this.pendingLen > 0 || data.length < HEADER_SIZE) {
        // assemble a frame that straddles chunks in `pending`
        data = this.fill(data, HEADER_SIZE)
        if (this.pendingLen < HEADER_SIZE) break
        const h = checkHeader(this.pending)
        if (this.handleHeaderError(h, out)) {
          if (this.failed) return out
          continue
        }
        data = this.fill(data, HEADER_SIZE + h.length)
        if (this.pendingLen < HEADER_SIZE + h.length) break
        this.pendingLen = 0
        out.push(
          h.error
            ?? {
              type: h.type,
              stream: h.stream,
              payload: copyOf(this.pending.subarray(HEADER_SIZE, HEADER_SIZE + h.length))
            }
        )
        continue
      }
      const h = checkHeader(data)
      if (this.handleHeaderError(h, out, () => (data = data.subarray(HEADER_SIZE)))) {
        if (this.failed) return out
        continue
      }
      if (data.length < HEADER_SIZE + h.length) {
        data = this.fill(data, HEADER_SIZE + h.length)
        break
      }
      out.push(
        h.error
          ?? {
            type: h.type,
            stream: h.stream,
            payload: copyOf(data.subarray(HEADER_SIZE, HEADER_SIZE + h.length))
          }
      )
      data = data.subarray(HEADER_SIZE + h.length)
    }
    return out
  }

  /** Fatal errors stop the decoder; an oversized frame turns into a skip. True when handled. */
  private handleHeaderError(
    h: ReturnType<typeof checkHeader>,
    out: Array<RawFrame | WireError>,
    consumeHeader?: () => void
  ): boolean {
    if (h.fatal) {
      out.push(h.error!)
      this.failed = true
      return true
    }
    if (h.error?.code === "frame_too_large") {
      out.push(h.error)
      this.skip = h.length
      if (consumeHeader) consumeHeader()
      else this.pendingLen = 0
      return true
    }
    return false
  }

  /** Copies from `data` into `pending` until it holds `target` bytes; returns the rest of `data`. */
  private fill(data: Uint8Array, target: number): Uint8Array {
    if (this.pending.length < target) {
      const grown = new Uint8Array(Math.max(target, this.pending.length * 2))
      grown.set(this.pending.subarray(0, this.pendingLen))
      this.pending = grown
    }
    const n = Math.max(0, Math.min(target - this.pendingLen, data.length))
    if (n > 0) {
      this.pending.set(data.subarray(0, n), this.pendingLen)
      this.pendingLen += n
    }
    return data.subarray(n)
  }
}

// ---- TLV ----

export interface Field {
  readonly tag: number
  readonly value: Uint8Array
}

/** Splits a TLV payload; `undefined` when a field runs past the end. */
export const readFields = (payload: Uint8Array): Array<Field> | undefined => {
  const fields: Array<Field> = []
  const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength)
  let off = 0
  while (off < payload.length) {
    if (payload.length - off < 6) return undefined
    const tag = v.getUint16(off, true)
    const len = v.getUint32(off + 2, true)
    if (len > payload.length - off - 6) return undefined
    fields.push({ tag, value: payload.subarray(off + 6, off + 6 + len) })
    off += 6 + len
  }
  return fields
}

/** Reads an unsigned value of 1, 2, 4 or 8 bytes no larger than `max`. */
export const readUint = (value: Uint8Array, max: number): number | undefined => {
  const len = value.length
  if (len !== 1 && len !== 2 && len !== 4 && len !== 8) return undefined
  let n = 0
  // byte by byte in floating point: exact up to 2^53, and anything larger is out of range anyway
  for (let i = len - 1; i >= 0; i--) n = n * 256 + value[i]!
  if (n > max || n > Number.MAX_SAFE_INTEGER) return undefined
  return n
}

const utf8 = new TextEncoder()
const utf8d = new TextDecoder("utf-8", { fatal: false })
export const textOf = (b: Uint8Array): string => utf8d.decode(b)

export class FieldWriter {
  private parts: Array<Uint8Array> = []
  private size = 0

  bytes(tag: number, value: Uint8Array): this {
    const h = new Uint8Array(6)
    const v = new DataView(h.buffer)
    v.setUint16(0, tag, true)
    v.setUint32(2, value.length, true)
    this.parts.push(h, value)
    this.size += 6 + value.length
    return this
  }
  string(tag: number, s: string): this {
    return this.bytes(tag, utf8.encode(s))
  }
  uint(tag: number, n: number, width: 1 | 2 | 4 | 8): this {
    const b = new Uint8Array(width)
    let rest = n
    for (let i = 0; i < width; i++) {
      b[i] = rest % 256
      rest = Math.floor(rest / 256)
    }
    return this.bytes(tag, b)
  }
  finish(): Uint8Array {
    const out = new Uint8Array(this.size)
    let off = 0
    for (const p of this.parts) {
      out.set(p, off)
      off += p.length
    }
    return out
  }
}

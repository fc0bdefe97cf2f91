/**
 * Reads the header of a GGUF file (magic, version, tensor count, metadata key/values).
 *
 * The parser works on a byte prefix of the file and never allocates from a count it read: counts
 * and lengths are checked against fixed ceilings and against the bytes actually present, so a
 * hostile header is refused rather than trusted. Array values are skipped (only their size is
 * checked): tokenizer vocabularies are large and nothing here needs them.
 */
import { Schema } from "effect"

export const GgufInfo = Schema.Struct({
  version: Schema.Number,
  tensorCount: Schema.Number,
  metadataCount: Schema.Number,
  architecture: Schema.optional(Schema.String),
  name: Schema.optional(Schema.String),
  contextLength: Schema.optional(Schema.Number)
})
export type GgufInfo = typeof GgufInfo.Type

/** Ceilings a valid file stays well under. */
export const GgufLimits = {
  maxTensors: 1 << 20,
  maxMetadata: 1 << 16,
  maxKeyBytes: 1 << 16,
  maxStringBytes: 1 << 24,
  maxArrayItems: 1 << 26
} as const

/** Why a header is refused (the caller maps it to an error kind). */
export class GgufInvalid extends Error {}

/** The header runs past the bytes given: a longer prefix may parse. */
export class GgufTruncated extends GgufInvalid {}

type Scalar = string | number | bigint | boolean

class Cursor {
  offset = 0
  constructor(readonly view: DataView, readonly bytes: Uint8Array) {}
  need(n: number) {
    if (this.offset + n > this.view.byteLength) throw new GgufTruncated("header is truncated")
  }
  u8() {
    this.need(1)
    return this.view.getUint8(this.offset++)
  }
  u32() {
    this.need(4)
    const v = this.view.getUint32(this.offset, true)
    this.offset += 4
    return v
  }
  u64() {
    this.need(8)
    const v = this.view.getBigUint64(this.offset, true)
    this.offset += 8
    return v
  }
  string(max: number): string {
    const len = this.u64()
    if (len > BigInt(max)) throw new GgufInvalid(`string of ${len} bytes exceeds the ${max}-byte limit`)
    const n = Number(len)
    this.need(n)
    const s = new TextDecoder("utf-8", { fatal: false }).decode(
      this.bytes.subarray(this.offset, this.offset + n)
    )
    this.offset += n
    return s
  }
}

const scalarSize: Record<number, number> = {
  0: 1,
  1: 1,
  2: 2,
  3: 2,
  4: 4,
  5: 4,
  6: 4,
  7: 1,
  10: 8,
  11: 8,
  12: 8
}

const readScalar = (c: Cursor, type: number): Scalar => {
  const size = scalarSize[type]
  if (size === undefined) throw new GgufInvalid(`unknown metadata value type ${type}`)
  c.need(size)
  const v = c.view
  const o = c.offset
  c.offset += size
  switch (type) {
    case 0:
      return v.getUint8(o)
    case 1:
      return v.getInt8(o)
    case 2:
      return v.getUint16(o, true)
    case 3:
      return v.getInt16(o, true)
    case 4:
      return v.getUint32(o, true)
    case 5:
      return v.getInt32(o, true)
    case 6:
      return v.getFloat32(o, true)
    case 7:
      return v.getUint8(o) !== 0
    case 10:
      return v.getBigUint64(o, true)
    case 11:
      return v.getBigInt64(o, true)
    default:
      return v.getFloat64(o, true)
  }
}

const skipArray = (c: Cursor, depth: number): void => {
  if (depth > 2) throw new GgufInvalid("arrays nested too deeply")
  const type = c.u32()
  const count = c.u64()
  if (count > BigInt(GgufLimits.maxArrayItems)) {
    throw new GgufInvalid(`array of ${count} items exceeds the ${GgufLimits.maxArrayItems}-item limit`)
  }
  const n = Number(count)
  const size = scalarSize[type]
  if (size !== undefined) {
    c.need(n * size)
    c.offset += n * size
    return
  }
  for (let i = 0; i < n; i++) {
    if (type === 8) c.string(GgufLimits.maxStringBytes)
    else if (type === 9) skipArray(c, depth + 1)
    else throw new GgufInvalid(`unknown array element type ${type}`)
  }
}

/** Parses a GGUF header from the file's first bytes; throws GgufInvalid saying why it is refused. */
export const parseGgufHeader = (bytes: Uint8Array): GgufInfo => {
  const c = new Cursor(new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), bytes)
  c.need(4)
  if (bytes[0] !== 0x47 || bytes[1] !== 0x47 || bytes[2] !== 0x55 || bytes[3] !== 0x46) {
    throw new GgufInvalid("not a GGUF file (bad magic)")
  }
  c.offset = 4
  const version = c.u32()
  if (version !== 2 && version !== 3) throw new GgufInvalid(`unsupported GGUF version ${version}`)
  const tensors = c.u64()
  if (tensors > BigInt(GgufLimits.maxTensors)) {
    throw new GgufInvalid(`tensor count ${tensors} exceeds the limit`)
  }
  const kvs = c.u64()
  if (kvs > BigInt(GgufLimits.maxMetadata)) throw new GgufInvalid(`metadata count ${kvs} exceeds the limit`)
  const metadata = new Map<string, Scalar>()
  for (let i = 0; i < Number(kvs); i++) {
    const key = c.string(GgufLimits.maxKeyBytes)
    const type = c.u32()
    if (type === 8) metadata.set(key, c.string(GgufLimits.maxStringBytes))
    else if (type === 9) skipArray(c, 0)
    else metadata.set(key, readScalar(c, type))
  }
  const str = (k: string) => {
    const v = metadata.get(k)
    return typeof v === "string" ? v : undefined
  }
  const architecture = str("general.architecture")
  const ctx = architecture === undefined ? undefined : metadata.get(`${architecture}.context_length`)
  const contextLength = typeof ctx === "number" ? ctx : typeof ctx === "bigint" ? Number(ctx) : undefined
  const name = str("general.name")
  return {
    version,
    tensorCount: Number(tensors),
    metadataCount: Number(kvs),
    ...(architecture === undefined ? {} : { architecture }),
    ...(name === undefined ? {} : { name }),
    ...(contextLength === undefined ? {} : { contextLength })
  }
}

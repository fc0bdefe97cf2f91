/** Writes small GGUF files for tests: a valid header with metadata and one tiny tensor, or broken ones. */
const u32 = (n: number) => {
  const b = Buffer.alloc(4)
  b.writeUInt32LE(n)
  return b
}
const u64 = (n: bigint | number) => {
  const b = Buffer.alloc(8)
  b.writeBigUInt64LE(BigInt(n))
  return b
}
const str = (s: string) => Buffer.concat([u64(Buffer.byteLength(s)), Buffer.from(s)])

export interface GgufOptions {
  readonly version?: number
  readonly tensorCount?: bigint
  readonly metadataCount?: bigint
  readonly magic?: string
  readonly padTo?: number
}

/** A llama-architecture header (name, context length, a string array) and one 4x4 f32 tensor. */
export const tinyGguf = (options: GgufOptions = {}): Buffer => {
  const kvs = [
    Buffer.concat([str("general.architecture"), u32(8), str("llama")]),
    Buffer.concat([str("general.name"), u32(8), str("tiny-test")]),
    Buffer.concat([str("llama.context_length"), u32(4), u32(256)]),
    Buffer.concat([str("general.alignment"), u32(4), u32(32)]),
    Buffer.concat([str("tokenizer.ggml.tokens"), u32(9), u32(8), u64(3), str("a"), str("b"), str("c")]),
    Buffer.concat([str("llama.rope.freq_base"), u32(6), Buffer.from(new Float32Array([10000]).buffer)]),
    Buffer.concat([str("general.quantized"), u32(7), Buffer.from([0])])
  ]
  const tensorInfo = Buffer.concat([str("w"), u32(2), u64(4), u64(4), u32(0), u64(0)])
  const head = Buffer.concat([
    Buffer.from(options.magic ?? "GGUF"),
    u32(options.version ?? 3),
    u64(options.tensorCount ?? 1n),
    u64(options.metadataCount ?? BigInt(kvs.length)),
    ...kvs,
    tensorInfo
  ])
  const pad = Buffer.alloc((32 - (head.length % 32)) % 32)
  const data = Buffer.from(new Float32Array(16).map((_, i) => i / 16).buffer)
  const body = Buffer.concat([head, pad, data])
  return options.padTo !== undefined && options.padTo > body.length
    ? Buffer.concat([body, Buffer.alloc(options.padTo - body.length)])
    : body
}

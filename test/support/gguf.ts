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

/**
 * A loadable llama model with random weights: 1 block, 32-wide embeddings, 4 heads, an SPM vocabulary
 * of letters, punctuation and the 256 byte tokens. llama.cpp loads it and generates (nonsense) tokens in
 * milliseconds; the same `seed` gives the same bytes.
 */
export const tinyLlama = (seed = 42): Buffer => {
  const i32 = (n: number) => {
    const b = Buffer.alloc(4)
    b.writeInt32LE(n)
    return b
  }
  const f32 = (x: number) => {
    const b = Buffer.alloc(4)
    b.writeFloatLE(x)
    return b
  }
  const type = { u32: 4, i32: 5, f32: 6, string: 8, array: 9 }
  const kv = (key: string, t: number, value: Buffer) => Buffer.concat([str(key), u32(t), value])
  const array = <A>(t: number, items: ReadonlyArray<A>, encode: (a: A) => Buffer) =>
    Buffer.concat([u32(t), u64(items.length), ...items.map(encode)])
  const nEmbd = 32
  const nFf = 64
  const nHead = 4
  const letters = "abcdefghijklmnopqrstuvwxyz".split("")
  const tokens = [
    "<unk>",
    "<s>",
    "</s>",
    ...letters,
    "▁",
    ".",
    "!",
    "?",
    ",",
    "\n",
    ...letters.map((l) => `▁${l}`)
  ]
  // Byte tokens: llama.cpp's SPM tokenizer falls back to them for any character not in the vocabulary.
  for (let b = 0; b < 256; b++) tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`)
  const kvs = [
    kv("general.architecture", type.string, str("llama")),
    kv("general.name", type.string, str("tiny-llama-test")),
    kv("general.alignment", type.u32, u32(32)),
    kv("llama.context_length", type.u32, u32(256)),
    kv("llama.embedding_length", type.u32, u32(nEmbd)),
    kv("llama.block_count", type.u32, u32(1)),
    kv("llama.feed_forward_length", type.u32, u32(nFf)),
    kv("llama.attention.head_count", type.u32, u32(nHead)),
    kv("llama.attention.head_count_kv", type.u32, u32(nHead)),
    kv("llama.attention.layer_norm_rms_epsilon", type.f32, f32(1e-5)),
    kv("llama.rope.dimension_count", type.u32, u32(nEmbd / nHead)),
    kv("tokenizer.ggml.model", type.string, str("llama")),
    kv("tokenizer.ggml.tokens", type.array, array(type.string, tokens, str)),
    kv("tokenizer.ggml.scores", type.array, array(type.f32, tokens.map((_, i) => -i), f32)),
    kv(
      "tokenizer.ggml.token_type",
      type.array,
      array(type.i32, tokens.map((t, i) => (i === 0 ? 2 : i < 3 ? 3 : t.startsWith("<0x") ? 6 : 1)), i32)
    ),
    kv("tokenizer.ggml.bos_token_id", type.u32, u32(1)),
    kv("tokenizer.ggml.eos_token_id", type.u32, u32(2)),
    kv("tokenizer.ggml.unknown_token_id", type.u32, u32(0))
  ]
  const nVocab = tokens.length
  const tensors: Array<readonly [string, ReadonlyArray<number>, boolean]> = [
    ["token_embd.weight", [nEmbd, nVocab], false],
    ["output_norm.weight", [nEmbd], true],
    ["output.weight", [nEmbd, nVocab], false],
    ["blk.0.attn_norm.weight", [nEmbd], true],
    ["blk.0.attn_q.weight", [nEmbd, nEmbd], false],
    ["blk.0.attn_k.weight", [nEmbd, nEmbd], false],
    ["blk.0.attn_v.weight", [nEmbd, nEmbd], false],
    ["blk.0.attn_output.weight", [nEmbd, nEmbd], false],
    ["blk.0.ffn_norm.weight", [nEmbd], true],
    ["blk.0.ffn_gate.weight", [nEmbd, nFf], false],
    ["blk.0.ffn_down.weight", [nFf, nEmbd], false],
    ["blk.0.ffn_up.weight", [nEmbd, nFf], false]
  ]
  let state = seed
  const random = () => {
    state = (state * 1103515245 + 12345) & 0x7fffffff
    return state / 0x7fffffff - 0.5
  }
  const align = (n: number) => Math.ceil(n / 32) * 32
  let offset = 0
  const infos: Array<Buffer> = []
  const data: Array<Buffer> = []
  for (const [name, dims, ones] of tensors) {
    const count = dims.reduce((a, b) => a * b, 1)
    const bytes = Buffer.alloc(align(count * 4))
    for (let i = 0; i < count; i++) bytes.writeFloatLE(ones ? 1 : random() * 0.5, i * 4)
    infos.push(Buffer.concat([str(name), u32(dims.length), ...dims.map(u64), u32(0), u64(offset)]))
    data.push(bytes)
    offset += bytes.length
  }
  const head = Buffer.concat([
    Buffer.from("GGUF"),
    u32(3),
    u64(tensors.length),
    u64(kvs.length),
    ...kvs,
    ...infos
  ])
  return Buffer.concat([head, Buffer.alloc(align(head.length) - head.length), ...data])
}

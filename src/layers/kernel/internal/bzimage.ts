/**
 * The x86 boot protocol's setup header, read from a bzImage: where the compressed kernel payload is,
 * how it is compressed, and the version string. See the kernel's Documentation/arch/x86/boot.rst.
 */

export type Compression = "gzip" | "xz" | "lz4" | "zstd" | "bzip2" | "lzma" | "lzo" | "none"

export interface BzImage {
  /** Boot protocol version, e.g. 0x20f. */
  readonly protocol: number
  readonly setupBytes: number
  readonly payload: Uint8Array
  readonly compression: Compression
  readonly version: string | undefined
}

export const isBzImage = (bytes: Uint8Array): boolean =>
  bytes.length > 0x260 && Buffer.from(bytes.buffer, bytes.byteOffset + 0x202, 4).toString("latin1") === "HdrS"

const startsWith = (bytes: Uint8Array, magic: ReadonlyArray<number>) => magic.every((b, i) => bytes[i] === b)

export const detectCompression = (payload: Uint8Array): Compression => {
  if (startsWith(payload, [0x1f, 0x8b])) return "gzip"
  if (startsWith(payload, [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])) return "xz"
  if (startsWith(payload, [0x02, 0x21, 0x4c, 0x18])) return "lz4"
  if (startsWith(payload, [0x28, 0xb5, 0x2f, 0xfd])) return "zstd"
  if (startsWith(payload, [0x42, 0x5a, 0x68])) return "bzip2"
  if (startsWith(payload, [0x5d, 0x00, 0x00])) return "lzma"
  if (startsWith(payload, [0x89, 0x4c, 0x5a, 0x4f])) return "lzo"
  if (startsWith(payload, [0x7f, 0x45, 0x4c, 0x46])) return "none"
  throw new Error("unrecognised kernel payload compression")
}

export const parseBzImage = (bytes: Uint8Array): BzImage => {
  if (!isBzImage(bytes)) throw new Error("not a bzImage (no HdrS signature at 0x202)")
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const protocol = view.getUint16(0x206, true)
  // payload_offset/payload_length exist from boot protocol 2.08 on.
  if (protocol < 0x208) throw new Error(`boot protocol ${protocol.toString(16)} is older than 2.08`)
  const setupSects = bytes[0x1f1] === 0 ? 4 : bytes[0x1f1]!
  const setupBytes = (setupSects + 1) * 512
  const payloadOffset = view.getUint32(0x248, true)
  const payloadLength = view.getUint32(0x24c, true)
  const start = setupBytes + payloadOffset
  if (start + payloadLength > bytes.length) {
    throw new Error("bzImage payload extends past the end of the file")
  }
  const payload = bytes.subarray(start, start + payloadLength)
  // kernel_version points (relative to 0x200) at a NUL-terminated string in the setup code.
  const versionPointer = view.getUint16(0x20e, true)
  let version: string | undefined
  if (versionPointer !== 0 && versionPointer + 0x200 < setupBytes) {
    const at = versionPointer + 0x200
    const end = bytes.indexOf(0, at)
    const text = Buffer.from(bytes.subarray(at, end < 0 ? at + 128 : end)).toString("latin1")
    version = text.split(" ")[0]
  }
  return { protocol, setupBytes, payload, compression: detectCompression(payload), version }
}

/** The tool that decompresses each format, and the Debian package that ships it. */
export const decompressors: Record<
  Exclude<Compression, "gzip" | "none">,
  { readonly command: string; readonly args: ReadonlyArray<string>; readonly debianPackage: string }
> = {
  xz: { command: "xz", args: ["-dc"], debianPackage: "xz-utils" },
  lzma: { command: "xz", args: ["--format=lzma", "-dc"], debianPackage: "xz-utils" },
  lz4: { command: "lz4", args: ["-dc"], debianPackage: "lz4" },
  zstd: { command: "zstd", args: ["-dc"], debianPackage: "zstd" },
  bzip2: { command: "bzip2", args: ["-dc"], debianPackage: "bzip2" },
  lzo: { command: "lzop", args: ["-dc"], debianPackage: "lzop" }
}

/**
 * Synthetic kernels for tests: a minimal ELF64 vmlinux (a PT_NOTE segment with the Xen PVH entry
 * note and a "Linux version" string), and a bzImage wrapping a compressed payload the way the kernel
 * build does (setup header, payload_offset/length, trailing size word).
 */

const align4 = (n: number) => (n + 3) & ~3

export const fakeVmlinux = (
  options: { readonly pvh?: boolean; readonly version?: string; readonly padding?: number } = {}
) => {
  const name = Buffer.from("Xen\0")
  const desc = Buffer.alloc(4)
  desc.writeUInt32LE(0x1000000, 0)
  const note = Buffer.alloc(12 + align4(name.length) + align4(desc.length))
  note.writeUInt32LE(name.length, 0)
  note.writeUInt32LE(desc.length, 4)
  note.writeUInt32LE(options.pvh === false ? 17 : 18, 8)
  name.copy(note, 12)
  desc.copy(note, 12 + align4(name.length))
  const banner = Buffer.from(`Linux version ${options.version ?? "9.9.9-test"} (builder@example) #1 SMP\0`)
  const header = Buffer.alloc(64)
  header.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0)
  header.writeUInt16LE(2, 0x10) // ET_EXEC
  header.writeUInt16LE(62, 0x12) // EM_X86_64
  header.writeUInt32LE(1, 0x14)
  header.writeBigUInt64LE(64n, 0x20) // e_phoff
  header.writeBigUInt64LE(0n, 0x28) // e_shoff
  header.writeUInt16LE(64, 0x34)
  header.writeUInt16LE(56, 0x36)
  header.writeUInt16LE(1, 0x38)
  header.writeUInt16LE(64, 0x3a)
  header.writeUInt16LE(0, 0x3c)
  header.writeUInt16LE(0, 0x3e)
  const noteOffset = 64 + 56
  const program = Buffer.alloc(56)
  program.writeUInt32LE(4, 0) // PT_NOTE
  program.writeBigUInt64LE(BigInt(noteOffset), 8)
  program.writeBigUInt64LE(BigInt(note.length), 0x20)
  program.writeBigUInt64LE(BigInt(note.length), 0x28)
  // Repetitive padding gives the compressors something to chew on.
  const padding = Buffer.alloc(options.padding ?? 64 * 1024, "microagent ")
  return Buffer.concat([header, program, note, banner, padding])
}

/** A bzImage around `payload` (already compressed), with the trailing uncompressed-size word. */
export const fakeBzImage = (payload: Uint8Array, uncompressedSize: number, version = "9.9.9-test") => {
  const setupSects = 3
  const setup = Buffer.alloc((setupSects + 1) * 512)
  setup[0x1f1] = setupSects
  setup.write("HdrS", 0x202, "latin1")
  setup.writeUInt16LE(0x20f, 0x206)
  const versionAt = 0x600
  setup.writeUInt16LE(versionAt - 0x200, 0x20e)
  setup.write(`${version} (builder@example) #1\0`, versionAt, "latin1")
  const size = Buffer.alloc(4)
  size.writeUInt32LE(uncompressedSize, 0)
  const body = Buffer.concat([Buffer.alloc(0x100, 0x90), payload, size])
  setup.writeUInt32LE(0x100, 0x248)
  setup.writeUInt32LE(payload.length + 4, 0x24c)
  return Buffer.concat([setup, body])
}

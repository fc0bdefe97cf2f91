/**
 * Just enough ELF64 (little-endian) reading for kernels and modules: section contents by name
 * (`.modinfo`) and the notes of PT_NOTE segments (the Xen PVH entry note).
 */

export interface ElfNote {
  readonly name: string
  readonly type: number
  readonly desc: Uint8Array
}

export interface ElfFile {
  readonly machine: number
  readonly section: (name: string) => Uint8Array | undefined
  readonly notes: () => ReadonlyArray<ElfNote>
}

/** ELF e_machine values we care about. */
export const EM_X86_64 = 62
export const EM_AARCH64 = 183

/** XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit entry point that QEMU uses to boot an ELF vmlinux via PVH. */
export const XEN_ELFNOTE_PHYS32_ENTRY = 18

export const isElf = (bytes: Uint8Array): boolean =>
  bytes.length >= 64 && bytes[0] === 0x7f && bytes[1] === 0x45 && bytes[2] === 0x4c && bytes[3] === 0x46

const align4 = (n: number) => (n + 3) & ~3

/** Parses the headers of an ELF64 little-endian file; throws with a plain message on anything else. */
export const parseElf = (bytes: Uint8Array): ElfFile => {
  if (!isElf(bytes)) throw new Error("not an ELF file")
  if (bytes[4] !== 2 || bytes[5] !== 1) throw new Error("only 64-bit little-endian ELF files are supported")
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const u16 = (at: number) => view.getUint16(at, true)
  const u32 = (at: number) => view.getUint32(at, true)
  const u64 = (at: number) => Number(view.getBigUint64(at, true))
  const slice = (offset: number, size: number) => {
    if (offset + size > bytes.length) throw new Error("ELF structure points past the end of the file")
    return bytes.subarray(offset, offset + size)
  }
  const machine = u16(0x12)
  const phoff = u64(0x20)
  const shoff = u64(0x28)
  const phentsize = u16(0x36)
  const phnum = u16(0x38)
  const shentsize = u16(0x3a)
  const shnum = u16(0x3c)
  const shstrndx = u16(0x3e)

  const sections = Array.from({ length: shoff === 0 ? 0 : shnum }, (_, i) => {
    const at = shoff + i * shentsize
    return { nameOffset: u32(at), type: u32(at + 4), offset: u64(at + 0x18), size: u64(at + 0x20) }
  })
  const names = sections[shstrndx]
  const decoder = new TextDecoder()
  const sectionName = (offset: number) => {
    if (names === undefined) return ""
    const table = slice(names.offset, names.size)
    const end = table.indexOf(0, offset)
    return decoder.decode(table.subarray(offset, end < 0 ? table.length : end))
  }

  const section = (name: string) => {
    const found = sections.find((s) => sectionName(s.nameOffset) === name)
    // SHT_NOBITS (8) occupies no bytes in the file.
    if (found === undefined || found.type === 8) return undefined
    return slice(found.offset, found.size)
  }

  const notes = () => {
    const out: Array<ElfNote> = []
    for (let i = 0; i < phnum; i++) {
      const at = phoff + i * phentsize
      if (u32(at) !== 4) continue // PT_NOTE
      const segment = slice(u64(at + 8), u64(at + 0x20))
      const segView = new DataView(segment.buffer, segment.byteOffset, segment.byteLength)
      let pos = 0
      while (pos + 12 <= segment.length) {
        const namesz = segView.getUint32(pos, true)
        const descsz = segView.getUint32(pos + 4, true)
        const type = segView.getUint32(pos + 8, true)
        const nameStart = pos + 12
        const descStart = nameStart + align4(namesz)
        if (descStart + descsz > segment.length) break
        // The name includes its terminating NUL.
        const name = decoder.decode(segment.subarray(nameStart, nameStart + Math.max(0, namesz - 1)))
        out.push({ name, type, desc: segment.subarray(descStart, descStart + descsz) })
        pos = descStart + align4(descsz)
      }
    }
    return out
  }

  return { machine, section, notes }
}

/** True when the ELF carries the note QEMU needs to boot it directly (PVH). */
export const hasPvhEntry = (elf: ElfFile): boolean =>
  elf.notes().some((note) => note.name === "Xen" && note.type === XEN_ELFNOTE_PHYS32_ENTRY)

/** The key=value strings of a module's `.modinfo` section. */
export const modinfo = (bytes: Uint8Array): ReadonlyArray<readonly [string, string]> => {
  const section = parseElf(bytes).section(".modinfo")
  if (section === undefined) return []
  const decoder = new TextDecoder()
  const out: Array<readonly [string, string]> = []
  let start = 0
  for (let i = 0; i <= section.length; i++) {
    if (i === section.length || section[i] === 0) {
      if (i > start) {
        const entry = decoder.decode(section.subarray(start, i))
        const eq = entry.indexOf("=")
        if (eq > 0) out.push([entry.slice(0, eq), entry.slice(eq + 1)])
      }
      start = i + 1
    }
  }
  return out
}

/** The module names a module depends on (its `depends=` entry, comma-separated, possibly empty). */
export const moduleDepends = (bytes: Uint8Array): ReadonlyArray<string> =>
  modinfo(bytes)
    .filter(([key]) => key === "depends")
    .flatMap(([, value]) => value.split(","))
    .map((name) => name.trim())
    .filter((name) => name.length > 0)

/** Finds "Linux version X" in a kernel image and returns X. */
export const linuxVersionIn = (bytes: Uint8Array): string | undefined => {
  const needle = Buffer.from("Linux version ")
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  let from = 0
  while (true) {
    const at = buffer.indexOf(needle, from)
    if (at < 0) return undefined
    const end = buffer.indexOf(0x20, at + needle.length)
    const version = buffer.subarray(at + needle.length, end < 0 ? at + needle.length + 64 : end).toString(
      "latin1"
    )
    // Skip format strings such as "Linux version %s".
    if (/^[0-9]+\.[0-9]+/.test(version)) return version
    from = at + needle.length
  }
}

/** Hand-made tar archives, for hostile inputs no tar tool would write. */

/** A raw ustar header: mode 0644, owner 0, `type` a ustar type flag ("0" file, "2" symlink, "5" dir). */
export const tarHeader = (name: string, type: string, size = 0, linkname = "") => {
  const block = Buffer.alloc(512)
  block.write(name, 0, 100)
  block.write("0000644\0", 100)
  block.write("0000000\0", 108)
  block.write("0000000\0", 116)
  block.write(`${size.toString(8).padStart(11, "0")}\0`, 124)
  block.write("00000000000\0", 136)
  block.write("        ", 148)
  block.write(type, 156)
  block.write(linkname, 157, 100)
  block.write("ustar\0", 257)
  block.write("00", 263)
  let sum = 0
  for (const byte of block) sum += byte
  block.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148)
  return block
}

/** A regular file entry: its header, its content and the padding to a whole block. */
export const tarFile = (name: string, content: string) => {
  const data = Buffer.from(content)
  return [tarHeader(name, "0", data.length), data, Buffer.alloc((512 - (data.length % 512)) % 512)]
}

/** Entries followed by the two zero blocks that end an archive. */
export const tarArchive = (...parts: Array<Buffer | Array<Buffer>>) =>
  Buffer.concat([...parts.flat(), Buffer.alloc(1024)])

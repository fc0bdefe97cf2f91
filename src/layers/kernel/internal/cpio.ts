/**
 * A writer for the cpio "newc" format, the one the Linux initramfs unpacker reads. Output is
 * deterministic (fixed mtime, sequential inode numbers) so equal inputs give equal sha256.
 */

export type CpioEntry =
  | { readonly type: "directory"; readonly path: string; readonly mode?: number }
  | { readonly type: "file"; readonly path: string; readonly mode?: number; readonly data: Uint8Array }
  | { readonly type: "symlink"; readonly path: string; readonly target: string }

const S_IFDIR = 0o040000
const S_IFREG = 0o100000
const S_IFLNK = 0o120000

const hex8 = (n: number) => n.toString(16).padStart(8, "0")
const pad4 = (n: number) => (4 - (n % 4)) % 4

const header = (fields: {
  ino: number
  mode: number
  nlink: number
  fileSize: number
  nameSize: number
}) =>
  "070701"
  + [
    fields.ino,
    fields.mode,
    0, // uid: root
    0, // gid: root
    fields.nlink,
    0, // mtime
    fields.fileSize,
    0, // devmajor
    0, // devminor
    0, // rdevmajor
    0, // rdevminor
    fields.nameSize,
    0 // check
  ].map(hex8).join("")

/** Serialises entries in the given order (parents must come before children), then the trailer. */
export const writeCpio = (entries: ReadonlyArray<CpioEntry>): Uint8Array => {
  const chunks: Array<Uint8Array> = []
  const encoder = new TextEncoder()
  const zeros = new Uint8Array(4)
  const push = (name: string, mode: number, nlink: number, data: Uint8Array, ino: number) => {
    const nameBytes = encoder.encode(name + "\0")
    const head = encoder.encode(
      header({ ino, mode, nlink, fileSize: data.length, nameSize: nameBytes.length })
    )
    chunks.push(head, nameBytes, zeros.subarray(0, pad4(head.length + nameBytes.length)))
    if (data.length > 0) chunks.push(data, zeros.subarray(0, pad4(data.length)))
  }
  let ino = 1
  for (const entry of entries) {
    const name = entry.path.replace(/^\/+/, "")
    if (name.length === 0 || name.split("/").includes("..")) throw new Error(`bad cpio path: ${entry.path}`)
    switch (entry.type) {
      case "directory":
        push(name, S_IFDIR | (entry.mode ?? 0o755), 2, new Uint8Array(0), ino++)
        break
      case "file":
        push(name, S_IFREG | (entry.mode ?? 0o644), 1, entry.data, ino++)
        break
      case "symlink":
        push(name, S_IFLNK | 0o777, 1, encoder.encode(entry.target), ino++)
        break
    }
  }
  push("TRAILER!!!", 0, 1, new Uint8Array(0), 0)
  return Buffer.concat(chunks)
}

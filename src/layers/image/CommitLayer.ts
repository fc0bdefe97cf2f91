/**
 * The layer blob `commit` writes, and what it reads from a base image's layers: a deterministic gzip
 * tar of the entries it was given (so that the same entries always give the same digest), and the
 * setuid/setgid bits of chosen paths in layer blobs. Which entries a commit holds is decided by the
 * program (programs/internal/CommitPlan.ts).
 */
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import { Writable } from "node:stream"
import * as NodeStream from "node:stream/promises"
import * as NodeZlib from "node:zlib"
import type { Ext4Tree, LayerItem, WrittenLayer } from "../../services/DiskTrees.ts"
import { TarReader } from "../rootfs/Tar.ts"
import { endOfArchive, layerEntryHeader, padding } from "../rootfs/TarWriter.ts"

const CHUNK = 1024 * 1024

/** The tar bytes of the entries, data read from the trees' data files. */
export async function* layerTar(
  items: ReadonlyArray<LayerItem>,
  trees: { readonly workspace: Ext4Tree; readonly base?: Ext4Tree | undefined }
): AsyncGenerator<Uint8Array> {
  for (const item of items) {
    yield layerEntryHeader(item.entry)
    if (item.data === undefined) continue
    const tree = item.data.origin === "base" ? trees.base : trees.workspace
    if (tree === undefined) throw new Error(`no data for ${item.entry.name}`)
    const fd = NodeFs.openSync(tree.dataFile(item.data.ino), "r")
    try {
      let remaining = item.entry.size
      while (remaining > 0) {
        const buffer = Buffer.allocUnsafe(Math.min(CHUNK, remaining))
        const n = NodeFs.readSync(fd, buffer, 0, buffer.length, null)
        if (n === 0) throw new Error(`the data of ${item.entry.name} is shorter than its size`)
        remaining -= n
        yield n === buffer.length ? buffer : buffer.subarray(0, n)
      }
    } finally {
      NodeFs.closeSync(fd)
    }
    const pad = padding(item.entry.size)
    if (pad.length > 0) yield pad
  }
  yield endOfArchive()
}

/**
 * Writes the gzip tar to `output`. gzip from zlib at a fixed level with no name and a zero mtime in its
 * header, so equal tars compress to equal bytes.
 */
/** Bytes of the tar each gzip member holds (the last one holds the rest). */
const memberBytes = 8 * 1024 * 1024

/**
 * Writes the layer blob: the tar, gzip-compressed, with its digest (of the blob) and diff ID (of the
 * tar). The tar is cut into 8 MiB pieces, each compressed on its own (zlib level 6, on libuv's
 * threads, as many at once as the host has cores) and written in order as one gzip member, which is
 * RFC 1952's multi-member form that every gzip reader decodes as one stream. The cut is at fixed
 * offsets, so the same tar always gives the same blob.
 */
export const writeLayer = async (tar: AsyncIterable<Uint8Array>, output: string, entries: number) => {
  const diffHash = NodeCrypto.createHash("sha256")
  const blobHash = NodeCrypto.createHash("sha256")
  const parallel = Math.max(1, NodeOs.availableParallelism())
  const fd = NodeFs.openSync(output, "w", 0o600)
  let size = 0
  const inFlight: Array<Promise<Buffer>> = []
  const compress = (piece: Buffer) =>
    new Promise<Buffer>((resolve, reject) =>
      NodeZlib.gzip(piece, { level: 6 }, (error, out) => (error === null ? resolve(out) : reject(error)))
    )
  const writeOldest = async () => {
    const member = await inFlight.shift()!
    blobHash.update(member)
    NodeFs.writeSync(fd, member)
    size += member.length
  }
  const pending: Array<Uint8Array> = []
  let pendingBytes = 0
  const cut = async (final: boolean) => {
    while (pendingBytes >= memberBytes || (final && pendingBytes > 0)) {
      const all = Buffer.concat(pending, pendingBytes)
      const piece = all.subarray(0, Math.min(memberBytes, all.length))
      const rest = all.subarray(piece.length)
      pending.length = 0
      pendingBytes = rest.length
      if (rest.length > 0) pending.push(rest)
      inFlight.push(compress(piece))
      if (inFlight.length >= parallel) await writeOldest()
    }
  }
  try {
    for await (const chunk of tar) {
      diffHash.update(chunk)
      pending.push(chunk)
      pendingBytes += chunk.length
      if (pendingBytes >= memberBytes) await cut(false)
    }
    await cut(true)
    while (inFlight.length > 0) await writeOldest()
  } finally {
    // A failure leaves no compression running behind the closed file.
    await Promise.allSettled(inFlight)
    NodeFs.closeSync(fd)
  }
  return {
    digest: `sha256:${blobHash.digest("hex")}`,
    diffId: `sha256:${diffHash.digest("hex")}`,
    size,
    entries
  } satisfies WrittenLayer
}

/**
 * The setuid/setgid bits the base image's layers give the paths the store stripped when it built the
 * baseline (`wanted`), read from gzip or plain layer blobs, bottom first (the top layer's entry wins).
 * zstd layers are not read: their paths keep the stripped mode.
 */
export const specialBitsIn = async (
  layers: ReadonlyArray<string>,
  wanted: ReadonlySet<string>
): Promise<Map<string, number>> => {
  const bits = new Map<string, number>()
  if (wanted.size === 0) return bits
  for (const file of layers) {
    const head = Buffer.alloc(4)
    const fd = NodeFs.openSync(file, "r")
    try {
      NodeFs.readSync(fd, head, 0, 4, 0)
    } finally {
      NodeFs.closeSync(fd)
    }
    if (head.readUInt32LE(0) === 0xfd2fb528) continue
    const gzip = head[0] === 0x1f && head[1] === 0x8b
    const reader = new TarReader({
      entry: (entry) => {
        const path = `/${entry.path.replace(/^(\.\/)+/, "").replace(/\/+$/, "")}`
        if (wanted.has(path) && entry.type !== "directory") bits.set(path, entry.mode & 0o6000)
      },
      data: () => {},
      end: () => {}
    })
    // A pipeline, read to the end: a stream torn down half way would report its error to nobody.
    const sink = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        try {
          if (!reader.finished) reader.write(chunk)
          callback()
        } catch (cause) {
          callback(cause instanceof Error ? cause : new Error(String(cause)))
        }
      }
    })
    const source = NodeFs.createReadStream(file, { highWaterMark: 256 * 1024 })
    await (gzip
      ? NodeStream.pipeline(source, NodeZlib.createGunzip(), sink)
      : NodeStream.pipeline(source, sink))
  }
  return bits
}

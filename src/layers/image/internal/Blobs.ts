/**
 * The content-addressed blob files of the image store (`images/blobs/sha256/<hex>`): manifests, configs
 * and layers, written under a partial name and renamed into place once complete (and verified when
 * copied from a local source). Also writes an image's blobs back out as an OCI archive.
 */
import { Effect } from "effect"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { diskFull, isNoSpace } from "../../../domain/DiskFull.ts"
import { Conflict, NotFound, Permanent } from "../../../domain/Errors.ts"
import type { HomeShape } from "../../../services/Home.ts"
import type { ImageRecord } from "../../../services/ImageStore.ts"
import type { Descriptor } from "../../../services/Registry.ts"
import { isAlive } from "../../process/Processes.ts"
import { writeOciArchive } from "../OciWriter.ts"

export const storeError = (what: string) => (cause: unknown) =>
  new Permanent({
    message: `image store: ${what}: ${cause instanceof Error ? cause.message : String(cause)}`,
    remediation: "check the state directory; `microagent image prune` removes unusable records"
  })

export const hexOf = (digest: string) => digest.replace(/^sha256:/, "")

/** Copies a local blob into the store, verifying its digest on the way. */
export const copyVerified = (
  from: string,
  descriptor: Descriptor,
  destination: string,
  onBytes: (n: number) => void
) =>
  Effect.try({
    try: () => {
      if (NodeFs.existsSync(destination)) return
      const partial = `${destination}.partial-${process.pid}-${NodeCrypto.randomBytes(4).toString("hex")}`
      const hash = NodeCrypto.createHash("sha256")
      const input = NodeFs.openSync(from, "r")
      const output = NodeFs.openSync(partial, "w", 0o600)
      const buffer = Buffer.allocUnsafe(1024 * 1024)
      let total = 0
      try {
        for (;;) {
          const n = NodeFs.readSync(input, buffer, 0, buffer.length, null)
          if (n === 0) break
          hash.update(buffer.subarray(0, n))
          NodeFs.writeSync(output, buffer, 0, n)
          total += n
          onBytes(n)
        }
        const actual = `sha256:${hash.digest("hex")}`
        if (actual !== descriptor.digest || total !== descriptor.size) {
          throw new Permanent({
            message:
              `blob digest mismatch: expected ${descriptor.digest} (${descriptor.size} bytes), got ${actual} (${total} bytes)`,
            remediation: "the local image is corrupted; nothing was recorded"
          })
        }
        NodeFs.renameSync(partial, destination)
      } finally {
        NodeFs.closeSync(input)
        NodeFs.closeSync(output)
        NodeFs.rmSync(partial, { force: true })
      }
    },
    catch: (cause) => cause instanceof Permanent ? cause : storeError(`copying ${from}`)(cause)
  })

/** A zombie (a killed process nobody reaped yet) counts as gone: `kill(pid, 0)` would say alive. */
const pidAlive = (pid: number): boolean => isAlive(pid, undefined)

/** Removes partial downloads whose process is gone. */
export const removeStalePartials = (dir: string) =>
  Effect.sync(() => {
    let names: Array<string> = []
    try {
      names = NodeFs.readdirSync(dir)
    } catch {
      return
    }
    for (const name of names) {
      const match = /\.partial-(\d+)-/.exec(name)
      if (match !== null && !pidAlive(Number(match[1]))) {
        NodeFs.rmSync(NodePath.join(dir, name), { force: true })
      }
    }
  })

/** The blob directory of `home` and the files in it. */
export const makeBlobFiles = (home: HomeShape) => {
  const blobDir = NodePath.join(home.blobs, "sha256")
  const blobPath = (digest: string) => NodePath.join(blobDir, hexOf(digest))

  /** Writes blobs given as bytes (manifests, configs) unless present, each complete or not at all. */
  const writeBlobs = (blobs: ReadonlyArray<readonly [digest: string, bytes: Uint8Array]>) =>
    Effect.try({
      try: () => {
        for (const [digest, bytes] of blobs) {
          const path = blobPath(digest)
          if (NodeFs.existsSync(path)) continue
          const partial = `${path}.partial-${process.pid}-${NodeCrypto.randomBytes(4).toString("hex")}`
          NodeFs.writeFileSync(partial, bytes, { mode: 0o600 })
          NodeFs.renameSync(partial, path)
        }
      },
      catch: storeError("writing metadata blobs")
    })

  /** Writes `image`'s manifest, config and layers as an OCI archive at `output` (which must not exist). */
  const saveArchive = (image: ImageRecord, output: string) =>
    Effect.gen(function*() {
      const target = NodePath.resolve(output)
      if (NodeFs.existsSync(target)) {
        return yield* new Conflict({
          message: `${target} already exists`,
          remediation: "remove it or pick another name"
        })
      }
      const manifestFile = blobPath(image.digest)
      const missing = [
        image.digest,
        ...(image.configDigest !== undefined ? [image.configDigest] : []),
        ...image.layers
      ]
        .filter((digest) => !NodeFs.existsSync(blobPath(digest)))
      if (image.configDigest === undefined || missing.length > 0) {
        return yield* new NotFound({
          message: `the store lacks blobs of ${image.ref}: ${missing.join(", ") || "its config"}`,
          remediation: `pull or import it again: microagent image pull ${image.ref}`
        })
      }
      const manifest = NodeFs.readFileSync(manifestFile)
      const mediaType = (JSON.parse(manifest.toString("utf8")) as { mediaType?: string }).mediaType
        ?? "application/vnd.oci.image.manifest.v1+json"
      const index = Buffer.from(JSON.stringify({
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.index.v1+json",
        manifests: [{
          mediaType,
          digest: image.digest,
          size: manifest.length,
          ...(image.platform !== undefined ? { platform: image.platform } : {}),
          annotations: {
            "org.opencontainers.image.ref.name": image.ref,
            "io.containerd.image.name": image.ref
          }
        }]
      }))
      yield* Effect.try({
        try: () =>
          writeOciArchive(
            target,
            index,
            [image.digest, image.configDigest, ...image.layers].map((digest) => ({
              digest: digest!,
              file: blobPath(digest!)
            }))
          ),
        catch: (cause) =>
          isNoSpace(cause)
            ? diskFull(`writing ${target}`, NodePath.dirname(target))
            : storeError(`writing ${target}`)(cause)
      })
      return { ref: image.ref, digest: image.digest, file: target, bytes: NodeFs.statSync(target).size }
    })

  return { blobDir, blobPath, writeBlobs, saveArchive }
}

export type BlobFiles = ReturnType<typeof makeBlobFiles>

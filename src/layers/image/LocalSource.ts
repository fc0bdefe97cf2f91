/**
 * Local image sources: an OCI image layout directory, or a tarball of one (`skopeo copy oci-archive:`),
 * or a `docker save` archive. Archives are unpacked with the same safe extractor as layers (no path
 * leaves the scratch directory); Docker archives are described as an OCI manifest of their files.
 */
import { Data, Effect } from "effect"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import type { ImageSource } from "../../services/ImageStore.ts"
import {
  type Descriptor,
  formatPlatform,
  type ImageConfigFile,
  isIndexMediaType,
  MediaTypes,
  type Platform
} from "../../services/Registry.ts"
import { choosePlatform, supportedLayer } from "../registry/Http.ts"
import { applyLayer } from "../rootfs/Apply.ts"
import { defaultStageOptions, Stage } from "../rootfs/Stage.ts"

export class LocalSourceError extends Data.TaggedError("LocalSourceError")<{ readonly message: string }> {}

export interface LocalImage {
  readonly source: ImageSource
  readonly digest: string
  readonly indexDigest?: string | undefined
  readonly manifest: Uint8Array
  readonly manifestMediaType: string
  readonly configDescriptor: Descriptor
  readonly config: ImageConfigFile
  readonly configBytes: Uint8Array
  readonly layers: ReadonlyArray<Descriptor>
  readonly platform: Platform
  /** A name the source gives the image (annotation or RepoTags), if any. */
  readonly name?: string | undefined
  /** The file holding a blob, inside the source. */
  readonly blobFile: (digest: string) => string
}

const fail = (message: string) => new LocalSourceError({ message })

export const sha256File = (path: string): string => {
  const hash = NodeCrypto.createHash("sha256")
  const fd = NodeFs.openSync(path, "r")
  const buffer = Buffer.allocUnsafe(1024 * 1024)
  try {
    for (;;) {
      const n = NodeFs.readSync(fd, buffer, 0, buffer.length, null)
      if (n === 0) break
      hash.update(buffer.subarray(0, n))
    }
  } finally {
    NodeFs.closeSync(fd)
  }
  return `sha256:${hash.digest("hex")}`
}

const readJson = <A>(path: string, what: string): A => {
  try {
    return JSON.parse(NodeFs.readFileSync(path, "utf8")) as A
  } catch (cause) {
    throw fail(`${what} (${path}) cannot be read: ${cause instanceof Error ? cause.message : String(cause)}`)
  }
}

const blobPathIn = (layout: string) => (digest: string) => {
  const [algorithm, hex] = digest.split(":")
  if (algorithm !== "sha256" || hex === undefined || !/^[a-f0-9]{64}$/.test(hex)) {
    throw fail(`unsupported digest ${digest}`)
  }
  return NodePath.join(layout, "blobs", "sha256", hex)
}

interface ManifestDoc {
  readonly mediaType?: string
  readonly manifests?: ReadonlyArray<Descriptor>
  readonly config?: Descriptor
  readonly layers?: ReadonlyArray<Descriptor>
}

const nameOf = (d: Descriptor): string | undefined =>
  d.annotations?.["io.containerd.image.name"] ?? d.annotations?.["org.opencontainers.image.ref.name"]

/** Reads an OCI image layout; `wantedName` picks among several tagged manifests. */
const readOciLayout = (
  layout: string,
  platform: Platform,
  wantedName: string | undefined,
  source: ImageSource
): LocalImage => {
  if (!NodeFs.existsSync(NodePath.join(layout, "oci-layout"))) {
    throw fail(`${layout} is not an OCI image layout (no oci-layout file)`)
  }
  const blob = blobPathIn(layout)
  const index = readJson<ManifestDoc>(NodePath.join(layout, "index.json"), "the layout's index.json")
  let candidates = index.manifests ?? []
  if (wantedName !== undefined) {
    const named = candidates.filter((d) => {
      const name = nameOf(d)
      return name !== undefined && (name === wantedName || name.endsWith(`:${wantedName}`))
    })
    if (named.length === 0) throw fail(`${layout} has no image named "${wantedName}"`)
    candidates = named
  }
  if (candidates.length === 0) throw fail(`${layout} holds no images`)
  let descriptor: Descriptor | undefined = candidates.length === 1
    ? candidates[0]
    : choosePlatform(candidates, platform)
  if (descriptor === undefined) {
    throw fail(`${layout} holds several images; name one (its org.opencontainers.image.ref.name)`)
  }
  const name = nameOf(descriptor)
  let indexDigest: string | undefined
  let manifestBytes = NodeFs.readFileSync(blob(descriptor.digest))
  for (let depth = 0; depth < 4; depth++) {
    if (sha256Bytes(manifestBytes) !== descriptor.digest) {
      throw fail(`manifest ${descriptor.digest} does not match its digest`)
    }
    const doc = JSON.parse(manifestBytes.toString("utf8")) as ManifestDoc
    if (
      isIndexMediaType(doc.mediaType ?? descriptor.mediaType)
      || (doc.manifests !== undefined && doc.layers === undefined)
    ) {
      indexDigest = descriptor.digest
      const chosen: Descriptor | undefined = choosePlatform(doc.manifests ?? [], platform)
      if (chosen === undefined) {
        throw fail(`the image index in ${layout} has no ${formatPlatform(platform)} image`)
      }
      descriptor = chosen
      manifestBytes = NodeFs.readFileSync(blob(chosen.digest))
      continue
    }
    if (doc.config === undefined || doc.layers === undefined) {
      throw fail(`manifest ${descriptor.digest} has no config or layers`)
    }
    const configBytes = NodeFs.readFileSync(blob(doc.config.digest))
    if (sha256Bytes(configBytes) !== doc.config.digest) {
      throw fail(`config ${doc.config.digest} does not match its digest`)
    }
    const config = JSON.parse(configBytes.toString("utf8")) as ImageConfigFile
    checkPlatform(config, platform)
    for (const layer of doc.layers) {
      if (!supportedLayer(layer.mediaType)) {
        throw fail(`layer ${layer.digest} has unsupported media type ${layer.mediaType}`)
      }
    }
    return {
      source,
      digest: descriptor.digest,
      indexDigest,
      manifest: manifestBytes,
      manifestMediaType: doc.mediaType ?? descriptor.mediaType ?? MediaTypes.ociManifest,
      configDescriptor: doc.config,
      config,
      configBytes,
      layers: doc.layers,
      platform: platformOf(config, platform),
      name,
      blobFile: blob
    }
  }
  throw fail(`${layout}: image indexes nested too deep`)
}

const sha256Bytes = (bytes: Uint8Array) =>
  `sha256:${NodeCrypto.createHash("sha256").update(bytes).digest("hex")}`

const checkPlatform = (config: ImageConfigFile, platform: Platform) => {
  if (config.os !== undefined && config.architecture !== undefined) {
    if (config.os !== platform.os || config.architecture !== platform.architecture) {
      throw fail(`the image is ${config.os}/${config.architecture}, not ${formatPlatform(platform)}`)
    }
  }
}

const platformOf = (config: ImageConfigFile, platform: Platform): Platform => {
  const variant = config.variant ?? platform.variant
  return {
    os: config.os ?? platform.os,
    architecture: config.architecture ?? platform.architecture,
    ...(variant !== undefined ? { variant } : {})
  }
}

/** Reads an unpacked `docker save` archive, describing it as a Docker v2 manifest. */
const readDockerArchive = (
  root: string,
  stage: Stage,
  platform: Platform,
  wantedName: string | undefined
): LocalImage => {
  const inRoot = (rel: string) => {
    const resolved = stage.resolve(rel.split("/").filter((p) => p.length > 0), true, `archive member ${rel}`)
    return NodePath.join(root, ...resolved)
  }
  const entries = readJson<Array<{ Config: string; RepoTags?: Array<string> | null; Layers: Array<string> }>>(
    inRoot("manifest.json"),
    "the archive's manifest.json"
  )
  const entry = wantedName === undefined
    ? entries[0]
    : entries.find((e) => (e.RepoTags ?? []).some((t) => t === wantedName || t.endsWith(`:${wantedName}`)))
  if (entry === undefined) {
    throw fail(wantedName === undefined ? "the archive holds no images" : `no image named ${wantedName}`)
  }
  const files = new Map<string, string>()
  const describe = (rel: string, mediaType: string): Descriptor => {
    const file = inRoot(rel)
    const digest = sha256File(file)
    files.set(digest, file)
    return { mediaType, digest, size: NodeFs.statSync(file).size }
  }
  const configDescriptor = describe(entry.Config, MediaTypes.dockerConfig)
  const configBytes = NodeFs.readFileSync(files.get(configDescriptor.digest)!)
  const config = JSON.parse(configBytes.toString("utf8")) as ImageConfigFile
  checkPlatform(config, platform)
  const layers = entry.Layers.map((rel) => {
    const head = Buffer.alloc(4)
    const fd = NodeFs.openSync(inRoot(rel), "r")
    NodeFs.readSync(fd, head, 0, 4, 0)
    NodeFs.closeSync(fd)
    const mediaType = head[0] === 0x1f && head[1] === 0x8b
      ? MediaTypes.dockerLayerGzip
      : head.readUInt32LE(0) === 0xfd2fb528
      ? MediaTypes.ociLayerZstd
      : MediaTypes.ociLayer
    return describe(rel, mediaType)
  })
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: MediaTypes.dockerManifest,
    config: configDescriptor,
    layers
  }))
  return {
    source: "docker-archive",
    digest: sha256Bytes(manifest),
    manifest,
    manifestMediaType: MediaTypes.dockerManifest,
    configDescriptor,
    config,
    configBytes,
    layers,
    platform: platformOf(config, platform),
    name: entry.RepoTags?.[0] ?? undefined,
    blobFile: (digest) => {
      const file = files.get(digest)
      if (file === undefined) throw fail(`blob ${digest} is not in the archive`)
      return file
    }
  }
}

/** Opens a layout directory or unpacks an archive into `scratch` and reads it. */
export const openLocalSource = (
  path: string,
  scratch: string,
  platform: Platform,
  wantedName: string | undefined
): Effect.Effect<LocalImage, LocalSourceError> =>
  Effect.gen(function*() {
    const st = NodeFs.statSync(path, { throwIfNoEntry: false })
    if (st === undefined) return yield* fail(`${path} does not exist`)
    if (st.isDirectory()) {
      return yield* Effect.try({
        try: () => readOciLayout(path, platform, wantedName, "oci-layout"),
        catch: (cause) => cause instanceof LocalSourceError ? cause : fail(String(cause))
      })
    }
    const root = NodePath.join(scratch, "archive")
    const stage = yield* Effect.try({
      try: () => new Stage(root, { ...defaultStageOptions, refuseDevices: true }),
      catch: (cause) => fail(String(cause))
    })
    yield* applyLayer(stage, path, NodePath.basename(path)).pipe(
      Effect.mapError((e) => fail(`cannot unpack ${path}: ${e.message}`))
    )
    return yield* Effect.try({
      try: () => {
        if (NodeFs.existsSync(NodePath.join(root, "oci-layout"))) {
          return readOciLayout(root, platform, wantedName, "oci-archive")
        }
        if (NodeFs.existsSync(NodePath.join(root, "manifest.json"))) {
          return readDockerArchive(root, stage, platform, wantedName)
        }
        throw fail(`${path} is neither an OCI archive (oci-layout) nor a docker save archive (manifest.json)`)
      },
      catch: (cause) => cause instanceof LocalSourceError ? cause : fail(String(cause))
    })
  })

/**
 * OCI image references, normalized the way `docker pull` users expect:
 * `ubuntu` is `docker.io/library/ubuntu:latest`, a first component with a dot, a port or equal to
 * `localhost` names a registry, and a digest pins the manifest.
 */
import { Data, Either, Schema } from "effect"

/** The image `run` and `create` use when none is given (built on the host: layers/image/BuiltinImages.ts). */
export const defaultImage = "microagent.local/busybox:latest"

export const defaultRegistry = "docker.io"
/** Docker Hub's API lives on another host than the name users type. */
export const dockerHubApiHost = "registry-1.docker.io"

export class ImageRef extends Schema.Class<ImageRef>("ImageRef")({
  /** Registry host with optional port, e.g. `docker.io`, `127.0.0.1:5000`. */
  registry: Schema.String,
  /** Repository path, e.g. `library/ubuntu`. */
  repository: Schema.String,
  /** Tag; absent when the reference is digest-only. */
  tag: Schema.optional(Schema.String),
  /** Manifest digest (`sha256:<64 hex>`). */
  digest: Schema.optional(Schema.String)
}) {
  /** `registry/repository`, the name without tag or digest. */
  get name(): string {
    return `${this.registry}/${this.repository}`
  }

  /** The canonical string: `registry/repository[:tag][@digest]`. */
  override toString(): string {
    return `${this.name}${this.tag !== undefined ? `:${this.tag}` : ""}${
      this.digest !== undefined ? `@${this.digest}` : ""
    }`
  }

  /** What to ask the registry for: the digest when pinned, else the tag. */
  get reference(): string {
    return this.digest ?? this.tag ?? "latest"
  }

  /** The host the registry API answers on (Docker Hub's differs from its name). */
  get apiHost(): string {
    return this.registry === defaultRegistry ? dockerHubApiHost : this.registry
  }

  /** The same repository at another tag or digest. */
  withDigest(digest: string): ImageRef {
    return new ImageRef({ registry: this.registry, repository: this.repository, tag: this.tag, digest })
  }
}

export class ImageRefError
  extends Data.TaggedError("ImageRefError")<{ readonly input: string; readonly reason: string }>
{
  override get message(): string {
    return `invalid image reference "${this.input}": ${this.reason}`
  }
}

const componentPattern = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/
const tagPattern = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/
const digestPattern = /^sha256:[a-f0-9]{64}$/
const hostPattern =
  /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$/

/** Whether the first path component names a registry rather than a Docker Hub namespace. */
const looksLikeRegistry = (component: string): boolean =>
  component.includes(".") || component.includes(":") || component === "localhost" || component.startsWith("[")

export const parseImageRef = (input: string): Either.Either<ImageRef, ImageRefError> => {
  const fail = (reason: string) => Either.left(new ImageRefError({ input, reason }))
  const text = input.trim()
  if (text.length === 0) return fail("it is empty")
  if (text.length > 4096) return fail("it is longer than 4096 characters")
  if (/\s/.test(text)) return fail("it contains whitespace")
  if (text.includes("://")) return fail("a reference has no scheme; drop the http:// or https:// prefix")

  let rest = text
  let digest: string | undefined
  const at = rest.indexOf("@")
  if (at >= 0) {
    digest = rest.slice(at + 1)
    rest = rest.slice(0, at)
    if (!digestPattern.test(digest)) {
      return fail(`"${digest}" is not a digest; expected sha256: followed by 64 lowercase hex digits`)
    }
  }

  let tag: string | undefined
  // A colon after the last slash separates the tag; one before it belongs to a registry port.
  const lastSlash = rest.lastIndexOf("/")
  const colon = rest.lastIndexOf(":")
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1)
    rest = rest.slice(0, colon)
    if (!tagPattern.test(tag)) {
      return fail(
        `"${tag}" is not a valid tag (letters, digits, '_', '.', '-', at most 128, not starting with '.' or '-')`
      )
    }
  }

  const parts = rest.split("/")
  let registry = defaultRegistry
  if (parts.length > 1 && looksLikeRegistry(parts[0]!)) {
    registry = parts.shift()!
    if (!hostPattern.test(registry)) return fail(`"${registry}" is not a valid registry host`)
  }
  if (registry === "index.docker.io" || registry === dockerHubApiHost) registry = defaultRegistry
  if (parts.length === 0 || parts.some((p) => p.length === 0)) {
    return fail("the repository name has an empty component")
  }
  for (const part of parts) {
    if (part !== part.toLowerCase()) return fail(`repository names must be lowercase ("${part}")`)
    if (!componentPattern.test(part)) {
      return fail(
        `"${part}" is not a valid repository component (lowercase letters, digits, separators . _ __ -)`
      )
    }
  }
  if (registry === defaultRegistry && parts.length === 1) parts.unshift("library")
  const repository = parts.join("/")
  if (registry.length + 1 + repository.length > 255) return fail("the name is longer than 255 characters")
  if (tag === undefined && digest === undefined) tag = "latest"
  return Either.right(new ImageRef({ registry, repository, tag, digest }))
}

/** The normalized string form of a reference, or the reason it is malformed. */
export const normalizeImageRef = (input: string): Either.Either<string, ImageRefError> =>
  Either.map(parseImageRef(input), (ref) => ref.toString())

/** Whether plain http is acceptable without an explicit `--insecure-registry`: loopback only. */
export const isLoopbackRegistry = (registry: string): boolean => {
  const host = registry.startsWith("[") ? registry.slice(1, registry.indexOf("]")) : registry.split(":")[0]!
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host)
}

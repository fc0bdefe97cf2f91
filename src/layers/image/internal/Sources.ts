/**
 * Where an image comes from: a registry (resolved and fetched by Registry), a local OCI layout or
 * OCI/docker archive (blobs copied and verified), or a built-in image written on the host. Each ends
 * in the same build of a baseline.
 */
import { Effect, Either } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { diskFull, isNoSpace } from "../../../domain/DiskFull.ts"
import { InvalidInput, ResourceExhausted } from "../../../domain/Errors.ts"
import { type ImageRef, parseImageRef } from "../../../domain/ImageRef.ts"
import type { HomeShape } from "../../../services/Home.ts"
import { scopedWorkDir } from "../../../services/Home.ts"
import type { EnsureOptions } from "../../../services/ImageStore.ts"
import { hostPlatform, parsePlatform, type RegistryShape } from "../../../services/Registry.ts"
import { MissingBuiltinTool, writeBuiltinLayout } from "../BuiltinImages.ts"
import { openLocalSource } from "../LocalSource.ts"
import { copyVerified, hexOf } from "./Blobs.ts"
import type { Baselines } from "./Build.ts"
import { parseRef } from "./Records.ts"

/** `oci:<dir>`, `oci-archive:<file>` or `docker-archive:<file>`: an image on this host. */
export const localTransport = /^(oci|oci-archive|docker-archive):(.+)$/

/** The platform asked for, or the host's. */
export const resolvePlatform = (options: EnsureOptions | undefined) => {
  if (options?.platform === undefined) return Effect.succeed(hostPlatform())
  const parsed = parsePlatform(options.platform)
  return parsed === undefined
    ? Effect.fail(
      new InvalidInput({
        message: `invalid platform "${options.platform}"`,
        remediation: "for example: linux/arm64"
      })
    )
    : Effect.succeed(parsed)
}

/** The sources of the store under `home`, each building through `baselines`. */
export const makeSources = (home: HomeShape, registry: RegistryShape, baselines: Baselines) => {
  const { materialize } = baselines

  const fromRegistry = (ref: ImageRef, options: EnsureOptions | undefined) =>
    Effect.gen(function*() {
      const platform = yield* resolvePlatform(options)
      options?.onProgress?.({ phase: "resolve" })
      const registryOptions = { insecure: options?.insecureRegistry, platform }
      const resolved = yield* registry.resolve(ref, registryOptions)
      return yield* materialize({
        ...resolved,
        ref: ref.toString(),
        source: "registry",
        fetchLayer: (descriptor, destination, onBytes) =>
          registry.fetchBlob(ref, descriptor, destination, { ...registryOptions, onBytes })
      }, options)
    })

  const importImage = Effect.fn("ImageStore.importImage")(function*(
    path: string,
    options?: EnsureOptions & { readonly tag?: string }
  ) {
    const platform = yield* resolvePlatform(options)
    const tagRef = options?.tag !== undefined ? yield* parseRef(options.tag) : undefined
    yield* home.ensureDir(home.tmp)
    return yield* Effect.scoped(Effect.gen(function*() {
      const scratch = yield* scopedWorkDir(home.tmp, "image-import-")
      const local = yield* openLocalSource(NodePath.resolve(path), scratch, platform, undefined).pipe(
        Effect.mapError((e) =>
          new InvalidInput({
            message: e.message,
            remediation: "give an OCI layout directory or an OCI/docker archive"
          })
        )
      )
      const named = tagRef?.toString()
        ?? (local.name !== undefined
          ? Either.getOrUndefined(parseImageRef(local.name))?.toString()
          : undefined)
        ?? `localhost/imported/${hexOf(local.digest).slice(0, 12)}:latest`
      return yield* materialize({
        ...local,
        ref: named,
        fetchLayer: (descriptor, destination, onBytes) =>
          Effect.suspend(() =>
            copyVerified(local.blobFile(descriptor.digest), descriptor, destination, onBytes)
          )
      }, options)
    }))
  })
  /** Builds a built-in image on the host and imports it under its name: no network involved. */
  const importBuiltin = (ref: string, options: EnsureOptions) =>
    Effect.acquireUseRelease(
      Effect.sync(() => NodePath.join(home.tmp, `builtin-${process.pid}-${Date.now()}`)),
      (layout) =>
        Effect.try({
          try: () => writeBuiltinLayout(ref, layout),
          catch: (cause) =>
            isNoSpace(cause)
              ? diskFull(`building the built-in image ${ref}`, home.tmp)
              : new ResourceExhausted({
                message: `cannot build the built-in image ${ref}: ${
                  cause instanceof Error ? cause.message : String(cause)
                }`,
                remediation: cause instanceof MissingBuiltinTool
                  ? "install the package named above"
                  : "see `microagent doctor`"
              })
        }).pipe(Effect.zipRight(importImage(layout, { ...options, tag: ref }))),
      (layout) => Effect.sync(() => NodeFs.rmSync(layout, { recursive: true, force: true }))
    )

  return { fromRegistry, importImage, importBuiltin }
}

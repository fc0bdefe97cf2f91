/**
 * The fake backend's image store: accepts any well-formed reference without pulling it, and gives each
 * workspace an empty scratch directory as its "root filesystem". For the fast test tier only.
 */
import { DateTime, Effect, Layer } from "effect"
import { createHash } from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { InvalidInput, NotFound, Permanent } from "../../../domain/Errors.ts"
import { ImageInfo } from "../../../domain/Workspace.ts"
import { ImageRecord, ImageStore } from "../../../services/ImageStore.ts"

const refPattern = /^[a-z0-9]+([._/:@-][A-Za-z0-9_.-]+)*$/

const record = (ref: string) =>
  new ImageRecord({
    ref,
    digest: `sha256:${createHash("sha256").update(ref).digest("hex")}`,
    config: new ImageInfo({ ref }),
    sizeBytes: 0,
    createdAt: DateTime.unsafeNow()
  })

export const layer = Layer.succeed(ImageStore, {
  ensure: (ref) =>
    refPattern.test(ref)
      ? Effect.succeed(record(ref))
      : Effect.fail(
        new InvalidInput({
          message: `invalid image reference "${ref}"`,
          remediation: "for example: alpine:3.20"
        })
      ),
  cloneRootfs: (_image, destination) =>
    Effect.try({
      try: () => {
        for (const dir of ["tmp", "root", "etc"]) {
          NodeFs.mkdirSync(NodePath.join(destination, dir), { recursive: true, mode: 0o700 })
        }
      },
      catch: (cause) =>
        new Permanent({ message: `cannot create ${destination}: ${String(cause)}`, remediation: "" })
    }),
  list: Effect.succeed([]),
  inspect: (ref) =>
    Effect.fail(
      new NotFound({ message: `image ${ref} not found`, remediation: "the fake backend keeps no images" })
    )
})

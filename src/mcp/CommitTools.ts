/**
 * `workspace.commit`: a stopped workspace as an image of the store, under the original's argument names
 * (`name`, `image`, `push`, `arch`, `allow_registry_shadow`). An agent may write only to names that
 * cannot shadow an image others pull: `local/...`, `localhost/...` or a loopback registry, unless the
 * call says `allow_registry_shadow: true`.
 */
import { Effect, Either, Schema } from "effect"
import { PolicyDenied, Unsupported } from "../domain/Errors.ts"
import { parseImageRef } from "../domain/ImageRef.ts"
import { CommitResult } from "../programs/Commit.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { defined } from "../rpc/Rpcs.ts"
import { hostPlatform } from "../services/Registry.ts"
import { type AnyTool, defineTool, described, optional } from "./Tool.ts"

const loopbackHost = /^(?:localhost|127(?:\.\d{1,3}){3}|\[::1\])(?::\d+)?$/

/** Whether a reference names only this host: `local/...`, `localhost[:port]/...` or a loopback registry. */
export const isLocalTarget = (ref: string): boolean => {
  if (ref.startsWith("local/")) return true
  const parsed = Either.getOrUndefined(parseImageRef(ref))
  return parsed !== undefined && loopbackHost.test(parsed.registry)
}

export const commitTools: ReadonlyArray<AnyTool> = [
  defineTool({
    name: "workspace.commit",
    title: "Commit a workspace as an image",
    description: "Save a halted, stopped or prepared workspace's root filesystem as an OCI image in this "
      + "state directory's store (owners, modes, setuid bits, symlinks, hard links and xattrs kept; what "
      + "the runtime wrote for itself left out), with the base image's config and a history entry. One "
      + "squashed layer, or `diff` for the base's layers plus one layer of the changes. The same content "
      + "gives the same digest. `push` sends it to its registry afterwards. Targets are limited to "
      + "local/..., localhost/... and loopback registries unless allow_registry_shadow is true.",
    input: {
      name: described(Schema.String, "the workspace's name"),
      image: described(Schema.NonEmptyTrimmedString, "the reference to record, e.g. local/team/app:1"),
      push: optional(Schema.Boolean, "push the image to its registry afterwards"),
      diff: optional(Schema.Boolean, "keep the base's layers and add one layer of the changes"),
      message: optional(Schema.String, "the comment of the image's history entry"),
      author: optional(Schema.String, "the image's author"),
      arch: optional(Schema.String, "the guest architecture (only the host's is supported)"),
      allow_registry_shadow: optional(
        Schema.Boolean,
        "allow a target outside local/..., localhost and loopback"
      ),
      insecure_registry: optional(
        Schema.Boolean,
        "with push: allow plain http to a registry that is not on loopback"
      )
    },
    output: CommitResult,
    kind: "mutate",
    sideEffects: ["records the image in the store", "with push: uploads blobs and a manifest to a registry"],
    cost: "host_compute_and_storage",
    run: (args) =>
      Effect.gen(function*() {
        const host = hostPlatform().architecture
        if (
          args.arch !== undefined && args.arch !== host && !(args.arch === "x86_64" && host === "amd64")
          && !(args.arch === "aarch64" && host === "arm64")
        ) {
          return yield* new Unsupported({
            message: `a commit has the workspace's architecture (${host}), not ${args.arch}`,
            remediation: "leave arch out",
            feature: "arch"
          })
        }
        if (args.allow_registry_shadow !== true && !isLocalTarget(args.image)) {
          return yield* new PolicyDenied({
            message: `${args.image} could shadow an image others pull from that registry`,
            remediation:
              "commit to local/..., localhost/... or a loopback registry, or pass allow_registry_shadow: true"
          })
        }
        const client = yield* MicroagentClient
        return yield* client.workspaceCommit(defined({
          name: args.name,
          ref: args.image,
          push: args.push,
          diff: args.diff,
          message: args.message,
          author: args.author,
          insecureRegistry: args.insecure_registry
        }))
      })
  })
]

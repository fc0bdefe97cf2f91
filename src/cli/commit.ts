/**
 * `commit WORKSPACE REF`: a thin client of the runtime, which owns the workspace's disk and the store.
 */
import { Args, Command, Options } from "@effect/cli"
import { Effect, Option } from "effect"
import type { CommitResult } from "../programs/Commit.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { pushJson } from "./image.ts"
import { withRuntime } from "./Layers.ts"
import { emit } from "./Output.ts"

const commitJson = (r: CommitResult) => ({
  workspace: r.workspace,
  ref: r.ref,
  digest: r.digest,
  base: r.base,
  diff: r.diff,
  layers: r.layers,
  layer: r.layer,
  created: r.created,
  ...(r.push !== undefined ? { push: pushJson(r.push) } : {})
})

const describeCommit = (r: CommitResult) =>
  [
    `${r.ref} ${r.digest}`,
    `${
      r.diff ? `${r.layers - 1} base layers + 1 layer of changes` : "1 layer"
    } (${r.layer.entries} entries, ${
      (r.layer.size / 1024 / 1024).toFixed(1)
    } MiB compressed), from workspace ${r.workspace} (base ${r.base})`,
    ...(r.push !== undefined
      ? [
        `pushed ${r.push.ref} ${r.push.digest} (${r.push.pushed.length} blobs sent, ${r.push.skipped.length} already there)`
      ]
      : [])
  ].join("\n")

export const commitCommand = Command.make("commit", {
  push: Options.boolean("push").pipe(Options.withDescription("push the image to its registry afterwards")),
  diff: Options.boolean("diff").pipe(
    Options.withDescription(
      "keep the base image's layers and add one layer of the changes (default: one squashed layer)"
    )
  ),
  message: Options.text("message").pipe(
    Options.withAlias("m"),
    Options.withDescription("the comment of the image's history entry"),
    Options.optional
  ),
  author: Options.text("author").pipe(Options.withDescription("the image's author"), Options.optional),
  insecureRegistry: Options.boolean("insecure-registry").pipe(
    Options.withDescription("with --push: allow plain http to this registry (loopback registries always may)")
  ),
  name: Args.text({ name: "workspace" }).pipe(
    Args.withDescription("a halted, stopped or prepared workspace")
  ),
  ref: Args.text({ name: "ref" }).pipe(
    Args.withDescription("the image reference to record, e.g. localhost/team/app:1")
  )
}, (o) =>
  withRuntime(Effect.flatMap(MicroagentClient, (client) =>
    client.workspaceCommit({
      name: o.name,
      ref: o.ref,
      push: o.push,
      diff: o.diff,
      ...(Option.isSome(o.message) ? { message: o.message.value } : {}),
      ...(Option.isSome(o.author) ? { author: o.author.value } : {}),
      insecureRegistry: o.insecureRegistry
    }))).pipe(Effect.flatMap((r) => emit(commitJson(r), () => describeCommit(r))))).pipe(
    Command.withDescription(
      "save a stopped workspace's root filesystem as an image in the local store (owners, modes, links and xattrs kept)"
    )
  )

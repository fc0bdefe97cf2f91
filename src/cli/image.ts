/**
 * `microagent image pull|push|list|inspect|tag|rm|prune|import` (`ls` for list, `delete` for rm). Each
 * subcommand opens the store itself, so `--help` touches no database. Progress goes to stderr when it
 * is a terminal; results are text on a terminal and JSON when piped or with `--json`.
 */
import { Args, Command, Options } from "@effect/cli"
import { DateTime, Effect, Option } from "effect"
import * as NodePath from "node:path"
import { InvalidInput, type MicroagentError } from "../domain/Errors.ts"
import { makeImageStore } from "../layers/image/ImageStoreLive.ts"
import { imageDependencies, imageStoreLayer } from "../layers/image/Stack.ts"
import { imagePush, type PushResult } from "../programs/Image.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { Home } from "../services/Home.ts"
import type { EnsureOptions, ImageRecord, ImageStoreAdmin, RemoveResult } from "../services/ImageStore.ts"
import { formatPlatform } from "../services/Registry.ts"
import { refuseDevicesOption } from "./Flags.ts"
import { Invocation } from "./Invocation.ts"
import { clusterOr } from "./Layers.ts"
import { emit, emitList, quietOption, table } from "./Output.ts"

/** Runs `f` with the admin image store of this invocation's state directory. */
const withImages = <A, E>(f: (store: ImageStoreAdmin) => Effect.Effect<A, E>) =>
  Effect.flatMap(Invocation, (invocation) =>
    Effect.flatMap(makeImageStore, f).pipe(
      Effect.provide(imageDependencies(Home.resolveRoot(invocation.stateDir)))
    ))

const human = (bytes: number) =>
  bytes >= 1024 * 1024 * 1024
    ? `${(bytes / 1024 / 1024 / 1024).toFixed(1)} GiB`
    : bytes >= 1024 * 1024
    ? `${(bytes / 1024 / 1024).toFixed(1)} MiB`
    : `${(bytes / 1024).toFixed(1)} KiB`

/** A one-line progress display on stderr (bytes downloaded, layers extracted), only on a terminal. */
const progressBar = () => {
  if (process.stderr.isTTY !== true) return { onProgress: undefined, done: () => {} }
  let bytes = { done: 0, total: 0 }
  let layers = { done: 0, total: 0 }
  let phase = "resolve"
  let last = 0
  let drawn = false
  const draw = (force = false) => {
    const now = Date.now()
    if (!force && now - last < 100) return
    last = now
    const width = 24
    const fraction = bytes.total > 0 ? Math.min(1, bytes.done / bytes.total) : 0
    const filled = Math.round(fraction * width)
    const bar = `[${"#".repeat(filled)}${"-".repeat(width - filled)}]`
    const text = phase === "resolve"
      ? "resolving…"
      : `${bar} ${human(bytes.done)}/${human(bytes.total)}  layers ${layers.done}/${layers.total}  ${phase}`
    process.stderr.write(`\r\x1b[2K${text}`)
    drawn = true
  }
  return {
    onProgress: (event: { readonly phase: string; readonly done?: number; readonly total?: number }) => {
      if (event.phase === "download") bytes = { done: event.done ?? 0, total: event.total ?? 0 }
      else if (event.phase === "extract") {
        layers = { done: event.done ?? 0, total: event.total ?? 0 }
        phase = "extracting"
      } else phase = event.phase
      draw(event.phase !== "download")
    },
    done: () => {
      if (drawn) process.stderr.write("\r\x1b[2K")
    }
  }
}

const recordJson = (r: ImageRecord) => ({
  ref: r.ref,
  digest: r.digest,
  platform: r.platform !== undefined ? formatPlatform(r.platform) : undefined,
  size_bytes: r.sizeBytes,
  needed_mib: r.neededMiB,
  baseline: r.baselinePath,
  source: r.source,
  index_digest: r.indexDigest,
  layers: r.layers,
  setuid_policy: r.setuidPolicy,
  setuid_stripped: r.setuidStripped,
  config: {
    entrypoint: r.config.entrypoint,
    cmd: r.config.cmd,
    env: r.config.env,
    user: r.config.user,
    working_dir: r.config.workingDir,
    stop_signal: r.config.stopSignal,
    exposed_ports: r.exposedPorts,
    labels: r.labels
  },
  created_at: DateTime.formatIso(r.createdAt),
  last_used_at: r.lastUsedAt !== undefined ? DateTime.formatIso(r.lastUsedAt) : undefined
})

const shortDigest = (digest: string) => digest.replace(/^sha256:/, "").slice(0, 12)

const describe = (r: ImageRecord) =>
  [
    `ref:        ${r.ref}`,
    `digest:     ${r.digest}`,
    ...(r.indexDigest ? [`index:      ${r.indexDigest}`] : []),
    `platform:   ${r.platform ? formatPlatform(r.platform) : "?"}`,
    `source:     ${r.source ?? "registry"}`,
    `size:       ${human(r.sizeBytes)}${
      r.neededMiB !== undefined ? ` (content needs ${r.neededMiB} MiB)` : ""
    }`,
    `baseline:   ${r.baselinePath ?? "-"}`,
    `layers:     ${r.layers.length}`,
    `setuid:     ${r.setuidPolicy ?? "strip"}${
      r.setuidStripped.length ? ` (stripped: ${r.setuidStripped.join(", ")})` : ""
    }`,
    `entrypoint: ${JSON.stringify(r.config.entrypoint)}`,
    `cmd:        ${JSON.stringify(r.config.cmd)}`,
    `env:        ${r.config.env.join(" ")}`,
    ...(r.config.user ? [`user:       ${r.config.user}`] : []),
    ...(r.config.workingDir ? [`workdir:    ${r.config.workingDir}`] : []),
    ...(r.config.stopSignal ? [`stop:       ${r.config.stopSignal}`] : [])
  ].join("\n")

const buildOptions = {
  platform: Options.text("platform").pipe(
    Options.withAlias("arch"),
    Options.withDescription("linux/amd64, linux/arm64[/v8] or just the architecture (default: this host's)"),
    Options.optional
  ),
  sizeMiB: Options.integer("size-mib").pipe(
    Options.withDescription("size of the root filesystem baseline in MiB (default: content plus headroom)"),
    Options.optional
  ),
  allowGuestSetuid: Options.boolean("allow-guest-setuid").pipe(
    Options.withDescription("keep setuid/setgid bits of image files (stripped by default)")
  ),
  refuseDevices: refuseDevicesOption,
  allowDevices: Options.boolean("allow-devices").pipe(
    Options.withDescription("no effect: device nodes are accepted by default (kept for older scripts)")
  )
}

const toEnsure = (
  o: {
    readonly platform: Option.Option<string>
    readonly sizeMiB: Option.Option<number>
    readonly allowGuestSetuid: boolean
    readonly refuseDevices: boolean
  },
  onProgress: EnsureOptions["onProgress"]
): EnsureOptions => ({
  ...(Option.isSome(o.platform) ? { platform: o.platform.value } : {}),
  ...(Option.isSome(o.sizeMiB) ? { baselineSizeMiB: o.sizeMiB.value } : {}),
  allowGuestSetuid: o.allowGuestSetuid,
  ...(o.refuseDevices ? { refuseDevices: true } : {}),
  ...(onProgress !== undefined ? { onProgress } : {})
})

const withProgress = <A, E, R>(f: (onProgress: EnsureOptions["onProgress"]) => Effect.Effect<A, E, R>) =>
  Effect.suspend(() => {
    const bar = progressBar()
    return f(bar.onProgress).pipe(Effect.ensuring(Effect.sync(bar.done)))
  })

const pull = Command.make(
  "pull",
  {
    ...buildOptions,
    insecureRegistry: Options.boolean("insecure-registry").pipe(
      Options.withDescription("allow plain http to this registry (loopback registries always may)")
    ),
    ref: Args.text({ name: "ref" }).pipe(
      Args.withDescription("image reference, e.g. alpine:3.20 or oci:/path/layout")
    )
  },
  (o) =>
    clusterOr(
      // Through the cluster: on every live runner, so that placement finds it wherever it lands.
      Effect.flatMap(MicroagentClient, (client) =>
        client.imagePull({
          ...toEnsure(o, undefined),
          ref: o.ref,
          insecureRegistry: o.insecureRegistry,
          refresh: true
        })),
      withProgress((onProgress) =>
        withImages((store) =>
          store.ensure(o.ref, {
            ...toEnsure(o, onProgress),
            insecureRegistry: o.insecureRegistry,
            refresh: true
          })
        )
      )
    ).pipe(Effect.flatMap((r) => emit(recordJson(r), () => `${r.ref} ${r.digest}`)))
).pipe(
  Command.withDescription(
    "pull an image and build its root filesystem baseline (with --cluster: on every runner)"
  )
)

const importCmd = Command.make("import", {
  ...buildOptions,
  tag: Options.text("tag").pipe(Options.withDescription("name to record the image under"), Options.optional),
  path: Args.text({ name: "path" }).pipe(
    Args.withDescription("OCI layout directory, or OCI/docker archive tarball")
  )
}, (o) =>
  withProgress((onProgress) =>
    withImages((store) =>
      store.importImage(NodePath.resolve(o.path), {
        ...toEnsure(o, onProgress),
        ...(Option.isSome(o.tag) ? { tag: o.tag.value } : {})
      })
    )
  ).pipe(Effect.flatMap((r) => emit(recordJson(r), () => `${r.ref} ${r.digest}`)))).pipe(
    Command.withDescription("import an image from an OCI layout or an OCI/docker archive")
  )

const listHandler = ({ quiet }: { readonly quiet: boolean }) =>
  withImages((store) => store.list).pipe(
    Effect.flatMap((records) =>
      emitList(quiet, records.map((r) => r.ref), { images: records.map(recordJson) }, () =>
        table(
          ["IMAGE", "DIGEST", "PLATFORM", "SIZE", "LAST USED"],
          records.map((r) => [
            r.ref,
            process.stdout.isTTY ? shortDigest(r.digest) : r.digest,
            r.platform ? formatPlatform(r.platform) : "-",
            human(r.sizeBytes),
            r.lastUsedAt !== undefined ? DateTime.formatIso(r.lastUsedAt).slice(0, 19).replace("T", " ") : "-"
          ])
        ))
    )
  )

const list = Command.make("list", { quiet: quietOption }, listHandler).pipe(
  Command.withDescription("list recorded images (alias: ls)")
)
const ls = Command.make("ls", { quiet: quietOption }, listHandler).pipe(
  Command.withDescription("list recorded images")
)

const inspect = Command.make(
  "inspect",
  {
    ref: Args.text({ name: "ref" }).pipe(Args.withDescription("reference, digest or digest prefix"))
  },
  ({ ref }) =>
    withImages((store) => store.inspect(ref)).pipe(
      Effect.flatMap((r) => emit(recordJson(r), () => describe(r)))
    )
).pipe(
  Command.withDescription("show an image's record: digest, platform, config, baseline")
)

const tag = Command.make("tag", {
  source: Args.text({ name: "source" }),
  target: Args.text({ name: "target" })
}, ({ source, target }) =>
  withImages((store) => store.tag(source, target)).pipe(
    Effect.flatMap((r) => emit(recordJson(r), () => `${r.ref} ${r.digest}`))
  )).pipe(Command.withDescription("record another name for an image"))

const renderRemoval = (result: RemoveResult) =>
  [
    ...result.removed.map((r) => `removed ${r}`),
    ...result.deleted.map((f) => `deleted ${f}`),
    ...result.kept.map((f) => `kept    ${f} (still in use)`)
  ].join("\n")

const removalJson = (r: RemoveResult) => ({ removed: r.removed, deleted: r.deleted, kept: r.kept })

const purgeOption = Options.boolean("purge").pipe(
  Options.withDescription("also delete files (baselines, blobs) no record or workspace uses")
)

const rmHandler = (
  { refs, purge }: { readonly refs: ReadonlyArray<string>; readonly purge: boolean }
): Effect.Effect<void, MicroagentError, Invocation> =>
  refs.length === 0
    ? Effect.fail(
      new InvalidInput({ message: "name at least one image", remediation: "microagent image rm REF…" })
    )
    : withImages((store) => store.remove(refs, { purge })).pipe(
      Effect.flatMap((r) => emit(removalJson(r), renderRemoval))
    )

const rmConfig = {
  purge: purgeOption,
  yes: Options.boolean("yes").pipe(
    Options.withAlias("y"),
    Options.withDescription("do not ask (accepted for compatibility)")
  ),
  refs: Args.text({ name: "ref" }).pipe(Args.repeated)
}
const rm = Command.make("rm", rmConfig, rmHandler).pipe(
  Command.withDescription("remove image records (alias: delete)")
)
const del = Command.make("delete", rmConfig, rmHandler).pipe(Command.withDescription("remove image records"))

const prune = Command.make(
  "prune",
  {
    purge: purgeOption,
    yes: Options.boolean("yes").pipe(
      Options.withAlias("y"),
      Options.withDescription("do not ask (accepted for compatibility)")
    )
  },
  ({ purge }) =>
    withImages((store) => store.prune({ purge })).pipe(
      Effect.flatMap((r) => emit(removalJson(r), renderRemoval))
    )
).pipe(
  Command.withDescription("drop records whose baseline is gone and unused files; --purge empties the store")
)

/** Upload progress on stderr, only on a terminal. */
const pushProgress = () => {
  if (process.stderr.isTTY !== true) return { onProgress: undefined, done: () => {} }
  let last = 0
  let drawn = false
  return {
    onProgress: (event: { readonly phase: string; readonly done?: number; readonly total?: number }) => {
      const now = Date.now()
      if (event.phase === "upload" && now - last < 100 && (event.done ?? 0) < (event.total ?? 0)) return
      last = now
      const text = event.phase === "upload"
        ? `uploading ${human(event.done ?? 0)}/${
          human(event.total ?? 0)
        } (blobs the registry has are not sent)`
        : event.phase
      process.stderr.write(`\r\x1b[2K${text}`)
      drawn = true
    },
    done: () => {
      if (drawn) process.stderr.write("\r\x1b[2K")
    }
  }
}

export const pushJson = (r: PushResult) => ({
  ref: r.ref,
  digest: r.digest,
  pushed: r.pushed,
  skipped: r.skipped,
  mounted: r.mounted,
  bytes: r.bytes,
  ...(r.rebuiltManifest === true ? { rebuilt_manifest: true } : {})
})

const push = Command.make("push", {
  to: Options.text("to").pipe(
    Options.withDescription("push under this reference instead of the image's own"),
    Options.optional
  ),
  insecureRegistry: Options.boolean("insecure-registry").pipe(
    Options.withDescription("allow plain http to this registry (loopback registries always may)")
  ),
  ref: Args.text({ name: "ref" }).pipe(
    Args.withDescription("image in the store: reference, digest or prefix")
  )
}, (o) =>
  Effect.flatMap(Invocation, (invocation) =>
    Effect.suspend(() => {
      const bar = pushProgress()
      return imagePush(o.ref, {
        ...(Option.isSome(o.to) ? { to: o.to.value } : {}),
        insecureRegistry: o.insecureRegistry,
        onProgress: bar.onProgress
      }).pipe(Effect.ensuring(Effect.sync(bar.done)))
    }).pipe(Effect.provide(imageStoreLayer(Home.resolveRoot(invocation.stateDir))))).pipe(
      Effect.flatMap((r) =>
        emit(
          pushJson(r),
          () =>
            `${r.ref} ${r.digest}\npushed ${r.pushed.length} (${
              human(r.bytes)
            }), skipped ${r.skipped.length}, mounted ${r.mounted.length}${
              r.rebuiltManifest === true
                ? "\n(the store kept no manifest: a rebuilt one was pushed, with a new digest)"
                : ""
            }`
        )
      )
    )).pipe(Command.withDescription("push an image of the store to a registry"))

const save = Command.make("save", {
  output: Options.file("output").pipe(
    Options.withAlias("o"),
    Options.withDescription("the OCI archive to write (must not exist)")
  ),
  ref: Args.text({ name: "ref" }).pipe(
    Args.withDescription("image in the store: reference, digest or prefix")
  )
}, ({ output, ref }) =>
  withImages((store) => store.save(ref, NodePath.resolve(output))).pipe(
    Effect.flatMap((r) => emit(r, () => `${r.ref} ${r.digest} -> ${r.file} (${human(r.bytes)})`))
  )).pipe(Command.withDescription("write an image of the store as an OCI archive"))

export const imageCommand = Command.make("image").pipe(
  Command.withDescription("pull, import, push, list, inspect, tag and remove images (alias: images)"),
  Command.withSubcommands([pull, importCmd, list, ls, inspect, tag, push, save, rm, del, prune])
)

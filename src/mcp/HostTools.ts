/**
 * MCP tools for the host: the image store, the kernel cache and the host check. Thin calls into the
 * RPC API, like the workspace tools.
 */
import { DateTime, Effect, Schema } from "effect"
import { NotFound, toErrorBody } from "../domain/Errors.ts"
import { PushResult } from "../programs/Image.ts"
import { StateBackup, StateCheckResult } from "../programs/State.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { DoctorResult, ImageRemoveResult } from "../rpc/HostRpcs.ts"
import { defined } from "../rpc/Rpcs.ts"
import type { ImageRecord } from "../services/ImageStore.ts"
import { formatPlatform, RegistryLogin } from "../services/Registry.ts"
import { type AnyTool, defineTool, described, optional, type PreviewResult } from "./Tool.ts"

const imageRef = {
  image: described(
    Schema.NonEmptyTrimmedString,
    "image reference (e.g. alpine:3.20, 127.0.0.1:5000/app:1), digest, or digest prefix of 12+ hex digits"
  )
}

/** An image as tools report it: what it is, where it came from, what it runs. */
const ImageSummary = Schema.Struct({
  ref: Schema.String,
  digest: Schema.String,
  platform: Schema.optional(Schema.String),
  sizeBytes: Schema.Number,
  /** The smallest root disk (MiB) its content fits in. */
  neededMiB: Schema.optional(Schema.Number),
  source: Schema.optional(Schema.String),
  entrypoint: Schema.Array(Schema.String),
  cmd: Schema.Array(Schema.String),
  user: Schema.optional(Schema.String),
  workingDir: Schema.optional(Schema.String),
  /** setuid/setgid bits removed from these paths when the image was built. */
  setuidStripped: Schema.Array(Schema.String),
  createdAt: Schema.String
})

const summary = (record: ImageRecord): typeof ImageSummary.Type => ({
  ref: record.ref,
  digest: record.digest,
  ...(record.platform === undefined ? {} : { platform: formatPlatform(record.platform) }),
  sizeBytes: record.sizeBytes,
  ...(record.neededMiB === undefined ? {} : { neededMiB: record.neededMiB }),
  ...(record.source === undefined ? {} : { source: record.source }),
  entrypoint: record.config.entrypoint,
  cmd: record.config.cmd,
  ...(record.config.user === undefined ? {} : { user: record.config.user }),
  ...(record.config.workingDir === undefined ? {} : { workingDir: record.config.workingDir }),
  setuidStripped: record.setuidStripped,
  createdAt: DateTime.formatIso(record.createdAt)
})

const KernelSummary = Schema.Struct({
  version: Schema.String,
  arch: Schema.String,
  source: Schema.String,
  sha256: Schema.String,
  sizeBytes: Schema.Number,
  format: Schema.String,
  modules: Schema.Int,
  installedAt: Schema.optional(Schema.String)
})

export const hostTools: ReadonlyArray<AnyTool> = [
  defineTool({
    name: "images.pull",
    title: "Pull an image",
    description: "Resolve an OCI image reference, download and verify its layers, and build its ext4 "
      + "baseline, so workspaces of it start without a download. Resolves the reference again if recorded.",
    input: {
      ...imageRef,
      platform: optional(Schema.String, "platform, e.g. linux/amd64 or linux/arm64/v8 (default: the host's)"),
      insecure_registry: optional(Schema.Boolean, "allow plain http to a registry that is not on loopback"),
      refuse_devices: optional(
        Schema.Boolean,
        "refuse layers holding character or block devices (accepted by default: created only in the image)"
      )
    },
    output: ImageSummary,
    kind: "mutate",
    sideEffects: ["downloads layers", "writes the image's baseline disk and record"],
    cost: "host_compute_and_storage",
    run: (args) =>
      Effect.flatMap(MicroagentClient, (client) =>
        client.imagePull(defined({
          ref: args.image,
          platform: args.platform,
          insecureRegistry: args.insecure_registry,
          refuseDevices: args.refuse_devices
        }))).pipe(Effect.map(summary))
  }),
  defineTool({
    name: "images.list",
    title: "List images",
    description: "Every image recorded in this state directory.",
    input: {},
    output: Schema.Struct({ images: Schema.Array(ImageSummary) }),
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: () =>
      Effect.flatMap(MicroagentClient, (client) => client.imageList()).pipe(
        Effect.map((result) => ({ images: result.images.map(summary) }))
      )
  }),
  defineTool({
    name: "images.inspect",
    title: "Inspect an image",
    description: "One recorded image: digest, platform, layers, size, and the config that decides what runs.",
    input: imageRef,
    output: Schema.Struct({ image: ImageSummary, layers: Schema.Array(Schema.String) }),
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: (args) =>
      Effect.flatMap(MicroagentClient, (client) => client.imageInspect({ ref: args.image })).pipe(
        Effect.map((record) => ({ image: summary(record), layers: record.layers }))
      )
  }),
  defineTool({
    name: "images.delete",
    title: "Delete an image",
    description: "Remove an image's record; with delete_files, also its files when no other record or "
      + "workspace uses them. Workspaces made from it keep their own disks.",
    input: {
      ...imageRef,
      delete_files: optional(Schema.Boolean, "also delete the image's files when nothing else uses them")
    },
    output: ImageRemoveResult,
    kind: "destructive",
    sideEffects: ["removes the image record", "deletes unused image files with delete_files"],
    cost: "host_io",
    run: (args) =>
      Effect.flatMap(
        MicroagentClient,
        (client) => client.imageRemove(defined({ refs: [args.image], purge: args.delete_files }))
      ),
    preview: (args) =>
      Effect.flatMap(MicroagentClient, (client) => client.imageInspect({ ref: args.image })).pipe(
        Effect.map((record): PreviewResult => ({
          preview: true,
          target: record.ref,
          actions: [
            `remove the record of ${record.ref} (${record.digest})`,
            ...(args.delete_files === true
              ? [`delete its layers and baseline disk unless another record or a workspace uses them`]
              : [])
          ]
        })),
        Effect.catchTag("NotFound", (error: NotFound) =>
          Effect.succeed<PreviewResult>({
            preview: true,
            target: args.image,
            actions: [],
            wouldFail: toErrorBody(error)
          }))
      )
  }),
  defineTool({
    name: "images.tag",
    title: "Tag an image",
    description: "Record an image under another reference too (both name the same digest and files).",
    input: {
      source: described(Schema.NonEmptyTrimmedString, "a recorded reference, digest or digest prefix"),
      target: described(Schema.NonEmptyTrimmedString, "the new reference, e.g. myapp:dev")
    },
    output: ImageSummary,
    kind: "mutate",
    sideEffects: ["records the image under target"],
    cost: "metadata",
    run: (args) =>
      Effect.flatMap(
        MicroagentClient,
        (client) => client.imageTag({ image: args.source, tag: args.target })
      )
        .pipe(Effect.map(summary))
  }),
  defineTool({
    name: "images.push",
    title: "Push an image",
    description: "Push an image of this state directory's store to a registry, under its own reference "
      + "or `to`, with the credentials pull uses. Blobs the registry has are not sent again; blobs of the "
      + "image's source repository on the same registry are mounted. The pushed digest is the local one.",
    input: {
      ...imageRef,
      to: optional(Schema.NonEmptyTrimmedString, "push under this reference, e.g. 127.0.0.1:5000/team/app:1"),
      insecure_registry: optional(Schema.Boolean, "allow plain http to a registry that is not on loopback")
    },
    output: PushResult,
    kind: "mutate",
    sideEffects: ["uploads blobs and a manifest to a registry", "moves a tag in that registry"],
    cost: "host_io",
    run: (args) =>
      Effect.flatMap(
        MicroagentClient,
        (client) =>
          client.imagePush(
            defined({ ref: args.image, to: args.to, insecureRegistry: args.insecure_registry })
          )
      )
  }),
  defineTool({
    name: "registry.list",
    title: "List registry logins",
    description: "The registry logins pull and push can use: hosts, usernames and the file each comes "
      + "from. Never a password. Logging in and out is for the operator (CLI or RPC), not for agents.",
    input: {},
    output: Schema.Struct({ logins: Schema.Array(RegistryLogin) }),
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: () => Effect.flatMap(MicroagentClient, (client) => client.registryList())
  }),
  defineTool({
    name: "images.prune",
    title: "Prune images",
    description: "Drop image records whose baseline disk is gone, and files no record or workspace uses; "
      + "with delete_files, every record and every unused file. Workspaces keep their own disks.",
    input: {
      delete_files: optional(Schema.Boolean, "empty the image store: every record and every unused file")
    },
    output: ImageRemoveResult,
    kind: "destructive",
    sideEffects: ["removes image records", "deletes unused image files"],
    cost: "host_io",
    run: (args) =>
      Effect.flatMap(MicroagentClient, (client) => client.imagePrune(defined({ purge: args.delete_files }))),
    preview: (args) =>
      Effect.flatMap(MicroagentClient, (client) => client.imageList()).pipe(
        Effect.map((result): PreviewResult => ({
          preview: true,
          actions: args.delete_files === true
            ? [
              `remove all ${result.images.length} image records`,
              "delete every image file no workspace uses"
            ]
            : ["remove the records whose baseline disk is gone", "delete image files nothing uses"]
        }))
      )
  }),
  defineTool({
    name: "microagent.ping",
    title: "Ping",
    description:
      "Answers at once when the server and its runtime are up: the version and the runtime's time.",
    input: {},
    output: Schema.Struct({ ok: Schema.Literal(true), version: Schema.String, time: Schema.String }),
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: () =>
      Effect.flatMap(MicroagentClient, (client) => client.version()).pipe(
        Effect.map((runtime) => ({
          ok: true as const,
          version: runtime.version,
          time: new Date().toISOString()
        }))
      )
  }),
  defineTool({
    name: "kernel.list",
    title: "List guest kernels",
    description: "The guest kernels in the cache; the newest of an architecture is the one VMs boot.",
    input: {},
    output: Schema.Struct({ kernels: Schema.Array(KernelSummary) }),
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: () =>
      Effect.flatMap(MicroagentClient, (client) => client.kernelList()).pipe(
        Effect.map((result) => ({
          kernels: result.kernels.map((k) => ({
            version: k.version,
            arch: k.arch,
            source: k.source,
            sha256: k.sha256,
            sizeBytes: k.sizeBytes,
            format: k.format,
            modules: k.modules.length,
            ...(k.installedAt === undefined ? {} : { installedAt: k.installedAt })
          }))
        }))
      )
  }),
  defineTool({
    name: "kernel.verify",
    title: "Verify the kernel cache",
    description: "Recompute the sha256 of every cached kernel, module and initramfs and compare it with "
      + "the recorded one.",
    input: {},
    output: Schema.Struct({
      ok: Schema.Boolean,
      files: Schema.Array(
        Schema.Struct({
          path: Schema.String,
          ok: Schema.Boolean,
          expected: Schema.String,
          actual: Schema.String
        })
      )
    }),
    kind: "read",
    sideEffects: [],
    cost: "host_io",
    run: () => Effect.flatMap(MicroagentClient, (client) => client.kernelVerify())
  }),
  defineTool({
    name: "doctor.check",
    title: "Check the host",
    description: "What this host has and lacks for running microVMs (QEMU, acceleration, e2fsprogs, "
      + "kernel tools, /dev/net/tun), each missing piece with the command that installs it.",
    input: {},
    output: DoctorResult,
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: () => Effect.flatMap(MicroagentClient, (client) => client.doctor())
  }),
  defineTool({
    name: "state.check",
    title: "Check the state database",
    description: "Run SQLite's full integrity_check on the state database (state.db) and list its backups. "
      + "When it is damaged, the remediation names the command that recovers it (`microagent state restore`, "
      + "run on the host: a restore stops the runtime that serves this server).",
    input: {},
    output: StateCheckResult,
    kind: "read",
    sideEffects: [],
    cost: "host_io",
    run: () => Effect.flatMap(MicroagentClient, (client) => client.stateCheck())
  }),
  defineTool({
    name: "state.backup",
    title: "Back up the state database",
    description: "Take a consistent online backup of the state database into the state directory's "
      + "backups/ (the newest few are kept).",
    input: {},
    output: StateBackup,
    kind: "mutate",
    sideEffects: [
      "writes a backup file under the state directory",
      "removes the oldest backups beyond the kept number"
    ],
    cost: "host_io",
    run: () => Effect.flatMap(MicroagentClient, (client) => client.stateBackup({}))
  })
]

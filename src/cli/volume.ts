/**
 * `microagent volume create|ls|inspect|rm|resize` (`list` for ls, `delete` for rm), run in this
 * process against the store like `create`; and the `-v/--volume` and `--secret` flags of run, create
 * and start. Secrets are resolved here, in the process of the user who typed the command (so `env:`
 * is their environment: src/rpc/CallerSecrets.ts), and travel to the runtime in memory only.
 */
import { Args, Command, Options } from "@effect/cli"
import { DateTime, Effect, Schema } from "effect"
import * as NodeFs from "node:fs"
import { parseBrokers, specBrokerTexts } from "../domain/Broker.ts"
import { InvalidInput } from "../domain/Errors.ts"
import { parseMountFlag, parseMountFlags, validateMounts } from "../domain/MountFlag.ts"
import { parseSecretFlags } from "../domain/SecretRefs.ts"
import type { Spec } from "../domain/Spec.ts"
import type { Mount, SecretRef } from "../domain/Workspace.ts"
import { defaultVolumeMiB } from "../layers/volume/VolumesLive.ts"
import * as VolumesLive from "../layers/volume/VolumesLive.ts"
import { volumeCreate, volumeInspect, volumeList, volumeRemove, volumeResize } from "../programs/Volume.ts"
import { secretsForStart as secretsForStartOf } from "../rpc/CallerSecrets.ts"
import type { MicroagentClient } from "../rpc/Client.ts"
import { Volume } from "../services/Volumes.ts"
import { withNewBackend } from "./Layers.ts"
import { emit, emitList, quietOption, table } from "./Output.ts"

export const volumeFlag = Options.text("volume").pipe(
  Options.withAlias("v"),
  Options.withPseudoName("SRC:DST"),
  Options.withDescription(
    "volume, .tar/.tgz or .ext4 at DST (:ro; repeatable)"
  ),
  Options.repeated
)

export const secretFlag = Options.text("secret").pipe(
  Options.withPseudoName("NAME=SOURCE"),
  Options.withDescription(
    "/run/secrets/NAME (env:/file:/dotenv:)"
  ),
  Options.repeated
)

/** The mounts of `-v` flags, relative paths taken from our working directory. */
export const mountsOf = (texts: ReadonlyArray<string>) =>
  texts.length === 0 ? Effect.succeed(undefined) : parseMountFlags(texts, process.cwd())

/**
 * `--broker` endpoints, and all the references a workspace gets: the `--secret` ones and the
 * endpoints' broker-held ones (relative paths taken from our working directory).
 */
export const brokeredSecretsOf = (
  brokerTexts: ReadonlyArray<string>,
  secrets: ReadonlyArray<SecretRef> | undefined,
  spec: Spec = {},
  specDir: string = process.cwd()
) =>
  Effect.gen(function*() {
    // The flags win outright over an Agentfile's agent.broker(s), whose paths are the spec's directory's.
    const flags = brokerTexts.length > 0
    const texts = flags ? brokerTexts : yield* specBrokerTexts(spec)
    if (texts.length === 0) return { brokers: undefined, secrets }
    const parsed = yield* parseBrokers(
      texts,
      flags ? process.cwd() : specDir,
      (path) => NodeFs.readFileSync(path, "utf8")
    )
    return { brokers: parsed.endpoints, secrets: [...(secrets ?? []), ...parsed.secrets] }
  })

/** The references of `--secret` flags. */
export const secretRefsOf = (texts: ReadonlyArray<string>) =>
  texts.length === 0 ? Effect.succeed(undefined) : parseSecretFlags(texts, process.cwd())

/**
 * The `disks` and `bundles` of a spec as mounts, their relative paths taken from the spec's directory;
 * each must be what its list says (an ext4 image, a tar bundle).
 */
export const specMountsOf = (spec: Spec, specDir: string) =>
  Effect.gen(function*() {
    const entries = [
      ...(spec.disks ?? []).map((disk, i) => ({ ...disk, at: `disks[${i}]`, kind: "image" as const })),
      ...(spec.bundles ?? []).map((bundle, i) => ({
        ...bundle,
        at: `bundles[${i}]`,
        kind: "bundle" as const
      }))
    ]
    const mounts: Array<Mount> = []
    for (const entry of entries) {
      const mount = yield* parseMountFlag(
        `${entry.path}:${entry.mountpoint}${entry.mode === undefined ? "" : `:${entry.mode}`}`,
        specDir
      ).pipe(
        Effect.mapError((error) =>
          new InvalidInput({ ...error, message: `spec ${entry.at}: ${error.message}` })
        )
      )
      if (mount.kind !== entry.kind) {
        return yield* new InvalidInput({
          message: `spec ${entry.at}: ${entry.path} is not ${
            entry.kind === "image" ? "an ext4 image (.ext4, .img)" : "a tar bundle (.tar, .tar.gz, .tgz)"
          }`,
          remediation:
            "disks are .ext4/.img files, bundles .tar/.tar.gz/.tgz files; a named volume goes with -v NAME:/path"
        })
      }
      mounts.push(mount)
    }
    return mounts
  })

/** A spec's mounts and those of `-v`, checked as one set (no guest path twice). */
export const allMountsOf = (spec: Spec, specDir: string, texts: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const mounts = [...(yield* specMountsOf(spec, specDir)), ...((yield* mountsOf(texts)) ?? [])]
    yield* validateMounts(mounts)
    return mounts.length === 0 ? undefined : mounts
  })

/** `start`'s secrets: the `--secret` references given, and the values of all, resolved here. */
export const secretsForStart = (
  client: MicroagentClient["Type"],
  name: string,
  texts: ReadonlyArray<string>
) => Effect.flatMap(secretRefsOf(texts), (given) => secretsForStartOf(client, name, given))

const withVolumes = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  withNewBackend(Effect.provide(effect, VolumesLive.layer))

const encodeVolume = Schema.encodeSync(Volume)
const encode = (volume: Volume) => encodeVolume(volume)

const describe = (v: Volume) =>
  [
    `name:      ${v.name}`,
    `size:      ${v.sizeMiB} MiB`,
    `path:      ${v.path}`,
    `attached:  ${v.attachedTo ?? "-"}`,
    `readers:   ${v.readers.length > 0 ? v.readers.join(", ") : "-"}`,
    `created:   ${DateTime.formatIso(v.createdAt)}`
  ].join("\n")

/** Who uses a volume: its read-write holder, or its read-only readers. */
const users = (v: Volume) =>
  v.attachedTo ?? (v.readers.length > 0 ? v.readers.map((r) => `${r} (ro)`).join(", ") : "-")

const nameArg = Args.text({ name: "name" }).pipe(Args.withDescription("volume name"))

const create = Command.make(
  "create",
  {
    sizeMiB: Options.integer("size-mib").pipe(
      Options.withDescription(`size in MiB (default ${defaultVolumeMiB})`),
      Options.optional
    ),
    name: nameArg
  },
  ({ name, sizeMiB }) =>
    withVolumes(volumeCreate(name, sizeMiB._tag === "Some" ? sizeMiB.value : undefined)).pipe(
      Effect.flatMap((v) => emit(encode(v), () => `${v.name}  ${v.sizeMiB} MiB  ${v.path}`))
    )
).pipe(Command.withDescription("make an empty ext4 volume that outlives workspaces"))

const listHandler = ({ quiet }: { readonly quiet: boolean }) =>
  withVolumes(volumeList()).pipe(
    Effect.flatMap((all) =>
      emitList(
        quiet,
        all.map((v) => v.name),
        { volumes: all.map(encode) },
        () =>
          all.length === 0
            ? "no volumes"
            : table(
              ["NAME", "SIZE", "ATTACHED", "CREATED"],
              all.map((
                v
              ) => [v.name, `${v.sizeMiB} MiB`, users(v), DateTime.formatIso(v.createdAt)])
            )
      )
    )
  )
const list = Command.make("ls", { quiet: quietOption }, listHandler).pipe(
  Command.withDescription("list the volumes (alias: list)")
)
const listAlias = Command.make("list", { quiet: quietOption }, listHandler).pipe(
  Command.withDescription("list the volumes")
)

const inspect = Command.make(
  "inspect",
  { name: nameArg },
  ({ name }) =>
    withVolumes(volumeInspect(name)).pipe(Effect.flatMap((v) => emit(encode(v), () => describe(v))))
).pipe(
  Command.withDescription("show a volume: size, file, the running workspace holding it")
)

const rmConfig = {
  force: Options.boolean("force").pipe(
    Options.withDescription("remove it even while a running workspace holds it")
  ),
  name: nameArg
}
const rmHandler = ({ name, force }: { readonly name: string; readonly force: boolean }) =>
  withVolumes(volumeRemove(name, { force })).pipe(Effect.flatMap((r) => emit(r, () => `removed ${r.volume}`)))
const rm = Command.make("rm", rmConfig, rmHandler).pipe(
  Command.withDescription("remove a volume and its data (alias: delete)")
)
const del = Command.make("delete", rmConfig, rmHandler).pipe(
  Command.withDescription("remove a volume and its data")
)

const resize = Command.make("resize", {
  sizeMiB: Options.integer("size-mib").pipe(Options.withDescription("the new size in MiB")),
  name: nameArg
}, ({ name, sizeMiB }) =>
  withVolumes(volumeResize(name, sizeMiB)).pipe(
    Effect.flatMap((v) => emit(encode(v), () => `${v.name}  ${v.sizeMiB} MiB`))
  )).pipe(
    Command.withDescription(
      "grow or shrink a volume offline (e2fsck + resize2fs; shrinking stops at its content)"
    )
  )

export const volumeCommand = Command.make("volume").pipe(
  Command.withDescription("create, list, inspect, resize and remove named volumes (alias: volumes)"),
  Command.withSubcommands([create, list, listAlias, inspect, rm, del, resize])
)

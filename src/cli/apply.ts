/**
 * `apply --file SPEC [W]`: the spec's fields into an existing workspace's record (programs/Apply.ts).
 */
import { Args, Command, Options } from "@effect/cli"
import { Effect, Option } from "effect"
import type { EgressMode } from "../domain/Egress.ts"
import { InvalidInput } from "../domain/Errors.ts"
import { parsePublishes } from "../domain/Publish.ts"
import type { Spec } from "../domain/Spec.ts"
import { apply, type ApplyFields, type ApplyResult } from "../programs/Apply.ts"
import { allOutputsOf } from "../programs/internal/Outputs.ts"
import { orUndefined, readSpec } from "./Flags.ts"
import { withStore } from "./Layers.ts"
import { emit } from "./Output.ts"
import { egressPolicyOf, filesOf, setupOf, specDirOf } from "./RunCommands.ts"
import { allMountsOf } from "./volume.ts"

const noFlags = {
  egress: Option.none<EgressMode>(),
  egressAllow: [],
  egressLockAllowlist: false,
  egressMaxConns: Option.none<number>(),
  egressMaxTotalBytes: Option.none<number>(),
  egressMaxBps: Option.none<number>()
}

/** The fields the spec names, resolved as `create --file` resolves them; the workspace named on the command line wins over the spec's `name`. */
const fieldsOf = (spec: Spec, file: Option.Option<string>) =>
  Effect.gen(function*() {
    const forwards = spec.network?.forwards
    const fields: ApplyFields = {
      image: spec.image,
      profile: spec.profile,
      memoryMiB: spec.resources?.memoryMiB,
      cpus: spec.resources?.cpuCount,
      sizeMiB: spec.resources?.sizeMiB,
      hostname: spec.hostname,
      restart: spec.restart,
      entrypoint: spec.entrypoint ?? spec.agent?.entry,
      env: spec.env,
      network: spec.network?.mode,
      ports: forwards === undefined ? undefined : yield* parsePublishes(
        forwards.map((f) => `${f.host ?? "127.0.0.1"}:${f.hostPort}:${f.guestPort}/${f.protocol ?? "tcp"}`)
      ),
      egress: spec.egress === undefined && spec.agent?.egress === undefined && spec.agent?.allow === undefined
        ? undefined
        : egressPolicyOf(noFlags, spec),
      mounts: spec.disks === undefined && spec.bundles === undefined
        ? undefined
        : (yield* allMountsOf(spec, specDirOf(file), [])) ?? [],
      outputs: spec.outputs === undefined ? undefined : yield* allOutputsOf(spec, []),
      files: spec.files === undefined ? undefined : yield* filesOf(spec, file, []),
      setup: spec.setup === undefined && spec.setupFiles === undefined
        ? undefined
        : yield* setupOf(spec, file, [])
    }
    return fields
  })

const show = (value: unknown) => value === undefined ? "(none)" : JSON.stringify(value)

const describeApply = (r: ApplyResult) =>
  r.changes.length === 0
    ? `${r.workspace}: unchanged`
    : [
      `${r.workspace} (${r.state}): ${r.dryRun ? "would change" : "changed"} ${r.changes.length} field${
        r.changes.length === 1 ? "" : "s"
      }, in effect at its next start`,
      ...r.changes.map((c) => `  ${c.field}: ${show(c.from)} -> ${show(c.to)}`)
    ].join("\n")

export const applyCommand = Command.make("apply", {
  file: Options.file("file").pipe(
    Options.withPseudoName("SPEC"),
    Options.withDescription("the microagent.yaml to apply")
  ),
  dryRun: Options.boolean("dry-run").pipe(Options.withDescription("show the changes and write nothing")),
  name: Args.text({ name: "workspace" }).pipe(
    Args.withDescription("the workspace (default: the spec's name)"),
    Args.optional
  )
}, (options) =>
  Effect.gen(function*() {
    const file = Option.some(options.file)
    const spec = yield* readSpec(file)
    const name = orUndefined(options.name) ?? spec.name
    if (name === undefined) {
      return yield* new InvalidInput({
        message: "no workspace named: the spec has no name and none was given",
        remediation: `microagent apply --file ${options.file} WORKSPACE`
      })
    }
    const fields = yield* fieldsOf(spec, file)
    const result = yield* withStore(apply(name, fields, { dryRun: options.dryRun }))
    yield* emit(result, describeApply)
  })).pipe(Command.withDescription("change a workspace's record to match a spec, without a rebuild"))

/**
 * `microagent template list|prune`: the warm-start templates in the store (docs/snapshots.md, "Warm
 * starts"). Thin clients of the runtime.
 */
import { Command, Options } from "@effect/cli"
import { Effect } from "effect"
import type { TemplateEntry } from "../domain/Template.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { withRuntime } from "./Layers.ts"
import { emit, table } from "./Output.ts"

const mib = (bytes: number) => `${(bytes / (1024 * 1024)).toFixed(1)}`

const listHandler = () =>
  withRuntime(Effect.flatMap(MicroagentClient, (client) => client.templateList())).pipe(
    Effect.flatMap((templates) =>
      emit(templates, (all: ReadonlyArray<TemplateEntry>) =>
        table(
          ["KEY", "IMAGE", "MEMORY_MIB", "CPUS", "NETWORK", "ON_DISK_MIB", "BUILD_MS", "STATE"],
          all.map(({ manifest: m, stale }) => [
            m.key,
            m.imageRef,
            String(m.shape.memoryMiB),
            String(m.shape.cpus),
            m.shape.network,
            mib(m.allocatedBytes),
            String(m.buildMs),
            stale === undefined ? "ready" : `stale: ${stale}`
          ])
        ))
    )
  )

const list = Command.make("list", {}, listHandler).pipe(
  Command.withDescription("list the warm-start templates (alias: ls)")
)
const ls = Command.make("ls", {}, listHandler).pipe(Command.withDescription("list the warm-start templates"))

const prune = Command.make(
  "prune",
  {
    all: Options.boolean("all").pipe(Options.withDescription("remove every template, not only stale ones"))
  },
  ({ all }) =>
    withRuntime(Effect.flatMap(MicroagentClient, (client) => client.templatePrune(all ? { all: true } : {})))
      .pipe(
        Effect.flatMap((result) =>
          emit(
            result,
            (r) => `removed ${r.removed.length} template(s), ${mib(r.freedBytes)} MiB; ${r.kept} kept`
          )
        )
      )
).pipe(
  Command.withDescription("remove templates whose image or kernel is gone (with --all: every one)")
)

export const templateCommand = Command.make("template").pipe(
  Command.withDescription("list and prune warm-start templates (alias: templates)"),
  Command.withSubcommands([list, ls, prune])
)

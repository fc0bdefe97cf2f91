/**
 * `microagent clone SOURCE TARGET`, and the rendering shared with `create NAME --from-snapshot W:T`:
 * a new workspace over a copy of another's disk. Both run in the CLI's own process (no VM is involved).
 * `microagent fork W --count N` goes through the runtime: it captures a VM and starts its children.
 */
import { Args, Command, Options } from "@effect/cli"
import { Effect } from "effect"
import type { WorkspaceCopy } from "../domain/Snapshot.ts"
import { clone } from "../programs/Clone.ts"
import { checkForkCount, type ForkResult, maxForkCount } from "../programs/Fork.ts"
import { workspaceSecretValues } from "../rpc/CallerSecrets.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { clusterOr, withRuntime, withWorkspaceBackend } from "./Layers.ts"
import { emit, jsonMode } from "./Output.ts"

export const describeCopy = (copy: WorkspaceCopy) =>
  `${copy.workspace.name}  ${copy.workspace.state}  from ${
    copy.snapshot === undefined ? copy.source : `${copy.source}:${copy.snapshot}`
  }  hostname=${copy.workspace.hostname}  (${
    copy.firstStart === "resume"
      ? "its first start resumes the snapshot's VM as this workspace"
      : "its first start boots from the copied disk"
  })`

/** Prints the copy; disks left out are said on stderr too, where a script's reader sees them. */
export const reportCopy = (copy: WorkspaceCopy) =>
  Effect.gen(function*() {
    if (copy.droppedMounts.length > 0 && !(yield* jsonMode)) {
      process.stderr.write(
        `microagent: not carried over (read-write disks are not shared): ${
          copy.droppedMounts.map((m) => `${m.source}:${m.target}`).join(", ")
        }\n`
      )
    }
    yield* emit(copy, describeCopy)
  })

const forkLine = (r: ForkResult) =>
  [
    `${r.source}: ${r.children.length} ${r.children.length === 1 ? "child" : "children"}${
      r.pausedMs === undefined ? "" : ` (paused ${r.pausedMs} ms for the capture)`
    }`,
    ...r.children.map((child) =>
      [
        `${child.name}  ${child.state}  hostname=${child.hostname}`,
        ...(child.addressing === undefined ? [] : [`ip=${child.addressing.ip}`]),
        ...child.ports.map((p) => `${p.hostIp}:${p.hostPort}->${p.guestPort}`)
      ].join("  ")
    )
  ].join("\n")

export const forkCommand = Command.make(
  "fork",
  {
    count: Options.integer("count").pipe(
      Options.withDescription(`how many children (1 to ${maxForkCount})`),
      Options.withDefault(1)
    ),
    namePrefix: Options.text("name-prefix").pipe(
      Options.withDescription("children are named PREFIX-1 … PREFIX-N (default: NAME-fork)"),
      Options.optional
    ),
    name: Args.text({ name: "name" }).pipe(Args.withDescription("a running workspace"))
  },
  ({ count, name, namePrefix }) =>
    // A bad count is a usage error whatever the workspace: said before anything is looked up.
    checkForkCount(count).pipe(Effect.zipRight(withRuntime(
      Effect.gen(function*() {
        const client = yield* MicroagentClient
        const secretValues = yield* workspaceSecretValues(client, name)
        return yield* client.fork({
          name,
          count,
          ...(namePrefix._tag === "Some" ? { namePrefix: namePrefix.value } : {}),
          ...(secretValues === undefined ? {} : { secretValues })
        })
      })
    ))).pipe(Effect.flatMap((r) => emit(r, forkLine)))
).pipe(
  Command.withDescription("running copies of a running workspace, each resumed from one capture of it")
)

export const cloneCommand = Command.make(
  "clone",
  {
    source: Args.text({ name: "source" }).pipe(
      Args.withDescription("a prepared, halted or stopped workspace")
    ),
    target: Args.text({ name: "target" }).pipe(Args.withDescription("the new workspace's name"))
  },
  ({ source, target }) =>
    clusterOr(
      // Under --cluster, the runner holding the source makes the copy.
      Effect.flatMap(MicroagentClient, (client) => client.clone({ source, target })),
      withWorkspaceBackend(source, clone(source, target))
    ).pipe(Effect.flatMap(reportCopy))
).pipe(
  Command.withDescription(
    "copy a stopped workspace (disk and configuration) to a new one with its own identity"
  )
)

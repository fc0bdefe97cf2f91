/**
 * `microagent clone SOURCE TARGET`, and the rendering shared with `create NAME --from-snapshot W:T`:
 * a new workspace over a copy of another's disk. Both run in the CLI's own process (no VM is involved).
 */
import { Args, Command } from "@effect/cli"
import { Effect } from "effect"
import type { WorkspaceCopy } from "../domain/Snapshot.ts"
import { clone } from "../programs/Clone.ts"
import { withWorkspaceBackend } from "./Layers.ts"
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

export const cloneCommand = Command.make(
  "clone",
  {
    source: Args.text({ name: "source" }).pipe(
      Args.withDescription("a prepared, halted or stopped workspace")
    ),
    target: Args.text({ name: "target" }).pipe(Args.withDescription("the new workspace's name"))
  },
  ({ source, target }) => withWorkspaceBackend(source, clone(source, target)).pipe(Effect.flatMap(reportCopy))
).pipe(
  Command.withDescription(
    "copy a stopped workspace (disk and configuration) to a new one with its own identity"
  )
)

/**
 * Offline work on ext4 disk files (workspace root disks): resizing, and reading how full they are.
 * The caller makes sure no VM uses the file.
 */
import { Context, type Effect } from "effect"
import type { Permanent, ResourceExhausted } from "../domain/Errors.ts"
import type { Ext4Usage } from "../domain/Usage.ts"

export interface DisksShape {
  /**
   * Grows the file and its filesystem to `sizeMiB`, or shrinks them when the content fits
   * (`ResourceExhausted` when it does not). `what` names the disk in messages.
   */
  readonly resize: (
    path: string,
    sizeMiB: number,
    what: string
  ) => Effect.Effect<void, Permanent | ResourceExhausted>
  readonly usage: (path: string, what: string) => Effect.Effect<Ext4Usage, Permanent>
}

export class Disks extends Context.Tag("microagent/Disks")<Disks, DisksShape>() {}

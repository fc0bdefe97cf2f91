/**
 * The guest's `sync`, so that its writes are in the disk image before the host reads that image (a
 * snapshot's disk copy, setup's baseline digest). Best effort and bounded: a guest that cannot answer
 * leaves the image as the VM last wrote it.
 */
import { Effect } from "effect"
import { ExecRequest } from "../../domain/Exec.ts"
import { GuestChannel } from "../../services/GuestChannel.ts"
import type { VmHandle } from "../../services/Hypervisor.ts"

export const syncGuest = (handle: VmHandle) =>
  handle.channel._tag === "HostDirectory" ? Effect.void : Effect.scoped(Effect.gen(function*() {
    const channel = yield* GuestChannel
    const connection = yield* channel.connect(handle.channel, { timeout: "5 seconds" })
    yield* connection.exec(new ExecRequest({ argv: ["sync"], env: {}, timeoutSeconds: 30 }))
  })).pipe(Effect.timeout("35 seconds"), Effect.ignore)

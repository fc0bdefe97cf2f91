/**
 * `volume create|ls|inspect|rm|resize`: named volumes and their holders. A holder whose workspace is
 * gone or no longer running is stale: listings do not report it, and rm and resize let it go.
 */
import { Effect } from "effect"
import { Conflict } from "../domain/Errors.ts"
import { defaultVolumeMiB, Volume, Volumes } from "../services/Volumes.ts"
import { holderIsLive } from "./internal/Mounts.ts"

/** The volume with only its live holder and readers. */
const current = (volume: Volume) =>
  Effect.gen(function*() {
    const holder = volume.attachedTo !== undefined && (yield* holderIsLive(volume.attachedTo))
      ? volume.attachedTo
      : undefined
    const readers = yield* Effect.filter(volume.readers, holderIsLive)
    return new Volume({ ...volume, attachedTo: holder, readers })
  })

export const volumeCreate = Effect.fn("volume.create")(function*(name: string, sizeMiB?: number) {
  const volumes = yield* Volumes
  return yield* volumes.create(name, sizeMiB ?? defaultVolumeMiB)
})

export const volumeList = Effect.fn("volume.list")(function*() {
  const volumes = yield* Volumes
  return yield* Effect.forEach(yield* volumes.list, current)
})

export const volumeInspect = Effect.fn("volume.inspect")(function*(name: string) {
  const volumes = yield* Volumes
  return yield* current(yield* volumes.inspect(name))
})

/** Lets go of stale holders and readers; a live one is a `Conflict` unless `force`. */
const freeFor = (volume: Volume, what: "remove" | "resize", force: boolean) =>
  Effect.gen(function*() {
    const volumes = yield* Volumes
    const users = [...(volume.attachedTo === undefined ? [] : [volume.attachedTo]), ...volume.readers]
    for (const user of users) {
      if ((yield* holderIsLive(user)) && !force) {
        return yield* new Conflict({
          message: `volume ${volume.name} is ${
            user === volume.attachedTo ? "attached to" : "mounted read-only by"
          } workspace ${user}, which is running`,
          remediation: what === "remove"
            ? `halt ${user} first (microagent halt ${user}), or pass --force to remove it anyway`
            : `halt ${user} first (microagent halt ${user}): resizing is done offline`
        })
      }
      if (what === "resize") yield* volumes.detach(volume.name, user)
    }
  })

export const volumeRemove = Effect.fn("volume.remove")(
  function*(name: string, options: { readonly force?: boolean | undefined } = {}) {
    const volumes = yield* Volumes
    const volume = yield* volumes.inspect(name)
    yield* freeFor(volume, "remove", options.force ?? false)
    yield* volumes.remove(name)
    return { volume: name, removed: true }
  }
)

export const volumeResize = Effect.fn("volume.resize")(function*(name: string, sizeMiB: number) {
  const volumes = yield* Volumes
  yield* freeFor(yield* volumes.inspect(name), "resize", false)
  return yield* volumes.resize(name, sizeMiB)
})

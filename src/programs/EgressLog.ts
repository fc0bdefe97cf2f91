/**
 * `egress WS`: the workspace's egress audit log, oldest first; with `follow`, new records until the
 * workspace stops running.
 */
import { Duration, Effect, Option, Stream } from "effect"
import type { EgressRecord } from "../domain/Egress.ts"
import { isLive } from "../domain/State.ts"
import { Egress } from "../services/Egress.ts"
import { StateStore } from "../services/StateStore.ts"

export const egressLog = (name: string, options: { readonly follow?: boolean } = {}) =>
  Stream.unwrap(Effect.gen(function*() {
    const store = yield* StateStore
    yield* store.get(name)
    // Backends without mediation (the fake one) have no log.
    const service = yield* Effect.serviceOption(Egress)
    if (Option.isNone(service)) return Stream.empty
    const egress = service.value
    const first = yield* egress.read(name)
    if (!options.follow) return Stream.fromIterable(first)
    let seen = first.length
    const more = Stream.repeatEffectOption(
      Effect.gen(function*() {
        yield* Effect.sleep(Duration.millis(200))
        const all = yield* egress.read(name).pipe(Effect.mapError(Option.some))
        const next: ReadonlyArray<EgressRecord> = all.slice(seen)
        seen = all.length
        const current = yield* store.find(name).pipe(Effect.mapError(Option.some))
        if (next.length === 0 && (Option.isNone(current) || !isLive(current.value.state))) {
          return yield* Effect.fail(Option.none())
        }
        return next
      })
    ).pipe(Stream.flattenIterables)
    return Stream.concat(Stream.fromIterable(first), more)
  }))

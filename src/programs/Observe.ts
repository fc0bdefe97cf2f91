/**
 * The observing verbs: `inspect`, `list`, `logs`, `events`, `wait`. Each reconciles what it reports
 * with the backend first, so a dead VMM is never reported as running.
 */
import { Duration, Effect, Option, Schedule, Stream } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Transient } from "../domain/Errors.ts"
import { isLive, isSettled } from "../domain/State.ts"
import type { Workspace } from "../domain/Workspace.ts"
import { StateStore } from "../services/StateStore.ts"
import { reconcile, vmHandleOf } from "./internal/Reconcile.ts"

export const inspect = Effect.fn("inspect")(function*(name: string) {
  const store = yield* StateStore
  const workspace = yield* store.get(name).pipe(Effect.flatMap(reconcile))
  const events = yield* store.events(name)
  return { workspace, lastEvent: events.at(-1) }
})

export const list = Effect.fn("list")(function*(options: { readonly runningOnly?: boolean } = {}) {
  const store = yield* StateStore
  const all = yield* store.list.pipe(Effect.flatMap(Effect.forEach(reconcile)))
  return options.runningOnly ? all.filter((ws) => isLive(ws.state)) : all
})

const consolePath = (workspace: Workspace) =>
  Option.match(vmHandleOf(workspace), {
    onNone: () => NodePath.join(workspace.runtimeDir, "console.log"),
    onSome: (handle) => handle.consoleLog
  })

const readFrom = (path: string, offset: number): Buffer => {
  try {
    const fd = NodeFs.openSync(path, "r")
    try {
      const size = NodeFs.fstatSync(fd).size
      if (size <= offset) return Buffer.alloc(0)
      const buffer = Buffer.alloc(size - offset)
      NodeFs.readSync(fd, buffer, 0, buffer.length, offset)
      return buffer
    } finally {
      NodeFs.closeSync(fd)
    }
  } catch {
    return Buffer.alloc(0)
  }
}

/** The console log; with `follow`, new output until the workspace stops running. */
export const logs = (name: string, options: { readonly follow?: boolean } = {}) =>
  Stream.unwrap(Effect.gen(function*() {
    const store = yield* StateStore
    const workspace = yield* store.get(name)
    const path = consolePath(workspace)
    const first = readFrom(path, 0)
    if (!options.follow) return Stream.make(new Uint8Array(first))
    let offset = first.length
    const more = Stream.repeatEffectOption(
      Effect.gen(function*() {
        yield* Effect.sleep(Duration.millis(200))
        const chunk = readFrom(path, offset)
        offset += chunk.length
        const current = yield* store.get(name).pipe(Effect.flatMap(reconcile), Effect.mapError(Option.some))
        if (chunk.length === 0 && !isLive(current.state)) return yield* Effect.fail(Option.none())
        return new Uint8Array(chunk)
      })
    )
    return Stream.concat(Stream.make(new Uint8Array(first)), more).pipe(
      Stream.filter((chunk) => chunk.length > 0)
    )
  }))

/** Lifecycle events, oldest first; with `follow`, new ones until the workspace settles. */
export const events = (name: string, options: { readonly follow?: boolean } = {}) =>
  Stream.unwrap(Effect.gen(function*() {
    const store = yield* StateStore
    yield* store.get(name)
    const first = yield* store.events(name)
    if (!options.follow) return Stream.fromIterable(first)
    let afterId = first.at(-1)?.id ?? 0
    const more = Stream.repeatEffectOption(
      Effect.gen(function*() {
        yield* Effect.sleep(Duration.millis(200))
        const next = yield* store.events(name, { afterId }).pipe(Effect.mapError(Option.some))
        afterId = next.at(-1)?.id ?? afterId
        const current = yield* store.find(name).pipe(Effect.mapError(Option.some))
        if (next.length === 0 && (Option.isNone(current) || isSettled(current.value.state))) {
          return yield* Effect.fail(Option.none())
        }
        return next
      })
    ).pipe(Stream.flattenIterables)
    return Stream.concat(Stream.fromIterable(first), more)
  }))

/** Whether the entrypoint the current start launched has ended (its result is in the record). */
export const entrypointDone = (ws: Workspace) =>
  ws.result !== undefined && ws.result.sessionId === ws.sessionId && ws.result.status !== "running"

/**
 * Blocks until the workspace is stopped, halted, failed, quarantined or prepared, or, for a workspace
 * with an entrypoint, until the entrypoint of its current start has ended (the VM keeps running).
 */
export const wait = Effect.fn("wait")(
  function*(
    name: string,
    options: { readonly timeout?: Duration.Duration; readonly interval?: Duration.Duration } = {}
  ) {
    const store = yield* StateStore
    const settled = store.get(name).pipe(
      Effect.flatMap(reconcile),
      Effect.filterOrFail((ws) => isSettled(ws.state) || entrypointDone(ws), () => "waiting" as const),
      Effect.retry({
        schedule: Schedule.spaced(options.interval ?? Duration.millis(250)),
        while: (error) => error === "waiting"
      })
    )
    const limit = options.timeout ?? Duration.infinity
    const result = yield* settled.pipe(
      Effect.timeoutFail({
        duration: limit,
        onTimeout: () =>
          new Transient({
            message: `workspace ${name} did not settle within ${Duration.format(limit)}`,
            remediation: "wait longer, or halt it",
            retryAfterMs: 1000
          })
      }),
      Effect.catchIf((error) => error === "waiting", () => Effect.die("unreachable"))
    )
    return result
  }
)

/**
 * `files`: host files put into the guest at every start, after the guest answers and before the
 * entrypoint (or setup) runs. The host side is checked before anything changes state.
 */
import { Effect, Stream } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { InvalidInput, Permanent } from "../../domain/Errors.ts"
import { ExecRequest } from "../../domain/Exec.ts"
import { FileCopy, validateFileCopies } from "../../domain/FileCopy.ts"
import { GuestChannel, type GuestError, GuestRemoteError } from "../../services/GuestChannel.ts"
import type { VmHandle } from "../../services/Hypervisor.ts"

const missing = (file: FileCopy, cause: unknown) =>
  new InvalidInput({
    message: `file ${file.source} (for ${file.target}) cannot be read: ${
      cause instanceof Error ? cause.message : String(cause)
    }`,
    remediation: "give a readable regular file on this host"
  })

/** Validates the targets and resolves each missing mode from its source (masked to 0644). */
export const resolveFileCopies = (files: ReadonlyArray<FileCopy> | undefined) =>
  Effect.gen(function*() {
    yield* validateFileCopies(files)
    return yield* Effect.forEach(files ?? [], (file) =>
      Effect.try({
        try: () => {
          const stat = NodeFs.statSync(file.source)
          if (!stat.isFile()) throw new Error("not a regular file")
          NodeFs.accessSync(file.source, NodeFs.constants.R_OK)
          return file.mode === undefined ? new FileCopy({ ...file, mode: stat.mode & 0o644 }) : file
        },
        catch: (cause) => missing(file, cause)
      }))
  })

/** Every source is still there and readable: checked before a start changes anything. */
export const checkFileSources = (files: ReadonlyArray<FileCopy>) =>
  Effect.forEach(files, (file) =>
    Effect.try({
      try: () => {
        if (!NodeFs.statSync(file.source).isFile()) throw new Error("not a regular file")
        NodeFs.accessSync(file.source, NodeFs.constants.R_OK)
      },
      catch: (cause) => missing(file, cause)
    }), { discard: true })

const bytesOf = (path: string): Stream.Stream<Uint8Array, GuestError> =>
  Stream.fromAsyncIterable(
    NodeFs.createReadStream(path, { highWaterMark: 1024 * 1024 }),
    (cause) => new GuestRemoteError({ message: `reading ${path}: ${String(cause)}` })
  )

/**
 * Puts the files into the guest, replacing the previous start's copies and making their parent directories (as root; relative to `/`, so that the
 * fake backend keeps them in its scratch root).
 */
export const deliverFiles = Effect.fn("deliverFiles")(function*(
  name: string,
  handle: VmHandle,
  files: ReadonlyArray<FileCopy>
) {
  if (files.length === 0) return
  const channel = yield* GuestChannel
  const targets = files.map((f) => NodePath.posix.normalize(f.target).replace(/^\/+/, ""))
  yield* Effect.scoped(Effect.gen(function*() {
    const connection = yield* channel.connect(handle.channel)
    const made = yield* connection.exec(
      // The previous start's copy goes first, with any temporary file of the agent's that a VM killed
      // mid-copy left on the disk (its name repeats across boots, and the agent will not overwrite it).
      new ExecRequest({
        argv: [
          "/bin/sh",
          "-c",
          `for t in "$@"; do rm -f "$t" "$t".ma-*; mkdir -p "$(dirname "$t")" || exit 1; done`,
          "microagent",
          ...targets
        ],
        user: "0",
        cwd: "/",
        timeoutSeconds: 30
      })
    )
    if (made.exitCode !== 0) {
      return yield* new GuestRemoteError({
        message: `mkdir: ${made.stderr.trim() || `exit ${made.exitCode}`}`
      })
    }
    for (const file of files) {
      yield* connection.putFile({ path: file.target, mode: file.mode ?? 0o644, data: bytesOf(file.source) })
    }
  })).pipe(
    Effect.mapError((error) =>
      new Permanent({
        message: `workspace ${name}: copying files into the guest failed: ${error.message}`,
        remediation: "check the files' targets (a directory in the way, a read-only path)"
      })
    )
  )
})

/**
 * Host files delivered into the guest at every start, before the entrypoint runs (`files:` in the spec,
 * `--file-copy SRC:DST[:MODE]` on the CLI). Targets are absolute guest paths, each named once.
 */
import { Effect, Schema } from "effect"
import * as NodePath from "node:path"
import { InvalidInput } from "./Errors.ts"

export class FileCopy extends Schema.Class<FileCopy>("FileCopy")({
  /** The host file, absolute; read by the runtime at each start. */
  source: Schema.String,
  /** The absolute guest path it lands at (parent directories are made). */
  target: Schema.String,
  /** Permission bits; when absent at create, the source's, masked to 0644. */
  mode: Schema.optional(Schema.Int.pipe(Schema.between(0, 0o7777)))
}) {}

const modePattern = /^0?[0-7]{3,4}$/

/** An octal mode string (`0755`, `644`). */
export const parseMode = (text: string): number | undefined =>
  modePattern.test(text) ? Number.parseInt(text, 8) : undefined

const invalid = (message: string) =>
  new InvalidInput({
    message,
    remediation:
      "give each file as SRC:DST[:MODE], DST an absolute guest path named once, MODE octal like 0755"
  })

/** `SRC:DST[:MODE]`; SRC relative to `baseDir`. */
export const parseFileCopy = (text: string, baseDir: string) =>
  Effect.gen(function*() {
    const parts = text.split(":")
    const last = parts.at(-1) ?? ""
    const hasMode = parts.length >= 3 && modePattern.test(last)
    const pieces = hasMode ? parts.slice(0, -1) : parts
    if (pieces.length !== 2 || pieces[0] === "" || pieces[1] === "") {
      return yield* invalid(`--file-copy ${JSON.stringify(text)}: expected SRC:DST[:MODE]`)
    }
    return new FileCopy({
      source: NodePath.resolve(baseDir, pieces[0]!),
      target: pieces[1]!,
      ...(hasMode ? { mode: parseMode(last)! } : {})
    })
  })

/** Refuses relative, root or repeated targets: before anything is created or booted. */
export const validateFileCopies = (files: ReadonlyArray<FileCopy> | undefined) =>
  Effect.gen(function*() {
    const seen = new Set<string>()
    for (const file of files ?? []) {
      if (!NodePath.posix.isAbsolute(file.target)) {
        return yield* invalid(`file target ${JSON.stringify(file.target)} is not an absolute guest path`)
      }
      const target = NodePath.posix.normalize(file.target).replace(/\/+$/, "")
      if (target === "") return yield* invalid("a file cannot be copied onto the guest's /")
      if (seen.has(target)) return yield* invalid(`file target ${target} is given more than once`)
      seen.add(target)
      if (!NodePath.isAbsolute(file.source)) {
        return yield* invalid(`file source ${JSON.stringify(file.source)} is not an absolute host path`)
      }
    }
  })

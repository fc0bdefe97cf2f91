/**
 * How results and errors reach the user: text on a terminal, JSON when piped or asked for
 * (`--json`, `--output json`, `MICROAGENT_OUTPUT=json`). Progress and errors go to stderr.
 */
import { Options } from "@effect/cli"
import { Effect } from "effect"
import { type MicroagentError, toErrorBody } from "../domain/Errors.ts"
import { Invocation } from "./Invocation.ts"

export const wantsJson = (explicit: boolean | undefined): boolean => {
  if (explicit !== undefined) return explicit
  const fromEnv = process.env.MICROAGENT_OUTPUT
  if (fromEnv === "json") return true
  if (fromEnv === "text") return false
  return !process.stdout.isTTY
}

/**
 * The exit code once our stdout's reader has gone (`microagent run … | head`): 141, as a process
 * ended by SIGPIPE, with nothing printed, as coreutils do. Any other failure to write stdout ends
 * the command with 1 and a one-line message. `watchPipes` must run before the first write.
 */
let stdoutGone: (code: number) => void = () => {}
export const stdoutClosed: Promise<number> = new Promise((resolve) => {
  stdoutGone = resolve
})

export const watchPipes = (): void => {
  process.stdout.on("error", (error: NodeJS.ErrnoException) => {
    if (error.code === "EPIPE" || error.code === "ERR_STREAM_DESTROYED") return stdoutGone(141)
    process.stderr.write(`microagent: cannot write to stdout: ${error.message}\n`)
    stdoutGone(1)
  })
  // Nowhere is left to report a closed stderr.
  process.stderr.on("error", () => {})
}

export const jsonMode = Invocation.pipe(Effect.map((invocation) => wantsJson(invocation.json)))

const writeOut = (text: string | Uint8Array) =>
  Effect.async<void>((resume) => {
    process.stdout.write(text, () => resume(Effect.void))
  })

/** `--quiet`/`-q` of the list commands. */
export const quietOption = Options.boolean("quiet").pipe(
  Options.withAlias("q"),
  Options.withDescription("print only the names, one per line")
)

/**
 * Prints a listing: only its names, one per line, with `--quiet` (for scripts and shell completion,
 * in any output mode); otherwise as `emit` does.
 */
export const emitList = <A>(
  quiet: boolean,
  names: ReadonlyArray<string>,
  value: A,
  text: (value: A) => string
) => quiet ? writeOut(names.map((name) => `${name}\n`).join("")) : emit(value, text)

/** Prints a result: the JSON form when piped, else the text rendering. */
export const emit = <A>(value: A, text: (value: A) => string) =>
  Effect.gen(function*() {
    const json = yield* jsonMode
    if (json) yield* writeOut(`${JSON.stringify(value)}\n`)
    else {
      const rendered = text(value)
      if (rendered.length > 0) yield* writeOut(rendered.endsWith("\n") ? rendered : `${rendered}\n`)
    }
  })

export const writeStdout = writeOut

export const renderError = (error: MicroagentError, json: boolean): string => {
  const body = toErrorBody(error)
  if (json) return `${JSON.stringify({ ok: false, error: body })}\n`
  return `error: ${body.message}\n${body.remediation ? `  ${body.remediation}\n` : ""}`
}

/** A fixed-width table for text output. */
export const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string => {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? "").length)))
  const line = (cells: ReadonlyArray<string>) =>
    cells.map((cell, i) => cell.padEnd(widths[i]!)).join("  ").trimEnd()
  return [line(header), ...rows.map(line)].join("\n")
}

/**
 * Durations as people type them on a command line: `30s`, `5m`, `1h30m`, `500ms`, `1.5h` (the units
 * of Go's duration syntax, which scripts written for the original use), or a bare number of seconds.
 */
import { Either } from "effect"

const unitSeconds: Record<string, number> = {
  ns: 1e-9,
  us: 1e-6,
  "µs": 1e-6,
  ms: 1e-3,
  s: 1,
  m: 60,
  h: 3600
}

const term = /(\d+(?:\.\d+)?|\.\d+)(ns|us|µs|ms|s|m|h)/y

/** Seconds, or why the text is not a duration. */
export const parseDuration = (text: string): Either.Either<number, string> => {
  const trimmed = text.trim()
  if (/^(\d+(\.\d+)?|\.\d+)$/.test(trimmed)) return Either.right(Number(trimmed))
  if (trimmed.length === 0) return Either.left("it is empty")
  if (trimmed.startsWith("-")) return Either.left("it is negative")
  let seconds = 0
  term.lastIndex = 0
  while (term.lastIndex < trimmed.length) {
    const at = term.lastIndex
    const match = term.exec(trimmed)
    if (match === null) {
      const rest = trimmed.slice(at)
      const unit = /^(?:\d+(?:\.\d+)?|\.\d+)(\D*)/.exec(rest)
      if (unit === null) return Either.left(`"${rest}" is not a number with a unit`)
      return Either.left(
        unit[1] === "" ? `"${rest}" has no unit` : `"${unit[1]}" is not a unit (ns, us, ms, s, m or h)`
      )
    }
    seconds += Number(match[1]) * unitSeconds[match[2]!]!
  }
  return Either.right(seconds)
}

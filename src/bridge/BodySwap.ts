/**
 * `@secret:NAME` references in request bodies: swapped for the values the endpoint holds, as the
 * bytes stream through, a reference cut between two chunks included. A reference to a name the
 * endpoint does not hold is left as written (a body may quote one), unlike in headers, the path and
 * the query, where it is refused.
 */
import { Transform, type TransformCallback } from "node:stream"

/** A whole reference (greedy: the name runs to the first character that cannot be in one). */
const reference = /@secret:([A-Za-z_][A-Za-z0-9_]{0,127})/g
/** The end of a buffer that may be the start of a reference the next chunk completes. */
const partial = /@(?:s(?:e(?:c(?:r(?:e(?:t(?::[A-Za-z0-9_]{0,128})?)?)?)?)?)?)?$/

/**
 * Swaps the held references in `bytes` (taken as latin1, so every byte round-trips) and adds the names
 * swapped to `refs`.
 */
const swapText = (text: string, held: ReadonlyMap<string, string>, refs: Set<string>) =>
  text.replace(reference, (match, name: string) => {
    const value = held.get(name)
    if (value === undefined) return match
    refs.add(name)
    return Buffer.from(value, "utf8").toString("latin1")
  })

/** A whole body with its held references swapped. */
export const swapBody = (body: Buffer, held: ReadonlyMap<string, string>, refs: Set<string>): Buffer =>
  held.size === 0 || !body.includes("@secret:")
    ? body
    : Buffer.from(swapText(body.toString("latin1"), held, refs), "latin1")

/** The streaming form: holds back a tail that may be a reference cut in two, until the next chunk. */
export class ReferenceSwap extends Transform {
  private carry = ""
  constructor(private readonly held: ReadonlyMap<string, string>, private readonly refs: Set<string>) {
    super()
  }
  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback) {
    const text = this.carry + chunk.toString("latin1")
    const cut = partial.exec(text)
    const upTo = cut === null ? text.length : cut.index
    this.carry = text.slice(upTo)
    done(null, Buffer.from(swapText(text.slice(0, upTo), this.held, this.refs), "latin1"))
  }
  override _flush(done: TransformCallback) {
    done(null, Buffer.from(swapText(this.carry, this.held, this.refs), "latin1"))
  }
}

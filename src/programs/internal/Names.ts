/**
 * Readable generated names for workspaces made without `--name`: `run-<adjective>-<animal>-<4 hex>`.
 */
import { randomBytes } from "node:crypto"

const adjectives = [
  "amber",
  "brave",
  "calm",
  "clever",
  "eager",
  "fancy",
  "gentle",
  "happy",
  "jolly",
  "keen",
  "lively",
  "merry",
  "nimble",
  "proud",
  "quiet",
  "rapid",
  "shiny",
  "sunny",
  "swift",
  "witty"
]
const animals = [
  "badger",
  "beaver",
  "bison",
  "crane",
  "dingo",
  "eagle",
  "ferret",
  "gecko",
  "heron",
  "ibex",
  "koala",
  "lemur",
  "llama",
  "marten",
  "otter",
  "panda",
  "quokka",
  "raven",
  "tapir",
  "walrus"
]

const pick = <A>(items: ReadonlyArray<A>, byte: number): A => items[byte % items.length]!

export const generateName = (prefix: string): string => {
  const bytes = randomBytes(4)
  return `${prefix}-${pick(adjectives, bytes[0]!)}-${pick(animals, bytes[1]!)}-${
    bytes.subarray(2).toString("hex")
  }`
}

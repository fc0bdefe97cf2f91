/**
 * References to GGUF model files on a Hugging Face-compatible hub.
 *
 * Accepted spellings: `hf.co/org/repo/path/file.gguf`, `huggingface.co/…`, bare
 * `org/repo/path/file.gguf`, each with an optional `@rev` after the repo or after the file, and a
 * full `https://huggingface.co/org/repo/resolve/REV/path/file.gguf`. The revision defaults to `main`.
 * Canonical form: `hf.co/org/repo@rev/path/file.gguf`.
 */
import { Effect, Schema } from "effect"
import { InvalidInput } from "./Errors.ts"

export const ModelRef = Schema.Struct({
  org: Schema.String,
  repo: Schema.String,
  revision: Schema.String,
  path: Schema.String
})
export type ModelRef = typeof ModelRef.Type

const segment = /^[A-Za-z0-9][A-Za-z0-9._-]*$/
const revision = /^[A-Za-z0-9][A-Za-z0-9._\-/]*$/

const invalid = (input: string, why: string) =>
  new InvalidInput({
    message: `model reference ${JSON.stringify(input)}: ${why}`,
    remediation:
      "use hf.co/ORG/REPO/FILE.gguf, hf.co/ORG/REPO@REV/FILE.gguf or a https://huggingface.co/ORG/REPO/resolve/REV/FILE.gguf URL"
  })

const checkPart = (input: string, what: string, part: string): InvalidInput | undefined => {
  if (part === "") return invalid(input, `empty ${what}`)
  if (part === "." || part === "..") return invalid(input, `${what} may not be "${part}"`)
  if (!segment.test(part)) {
    return invalid(input, `${what} ${JSON.stringify(part)} has characters outside [A-Za-z0-9._-]`)
  }
  return undefined
}

/** Parses a model reference; a malformed one is an InvalidInput naming what is wrong. */
export const parseModelRef = (input: string): Effect.Effect<ModelRef, InvalidInput> =>
  Effect.suspend(() => {
    const text = input.trim()
    if (text === "") return Effect.fail(invalid(input, "empty reference"))
    let org: string
    let repo: string
    let rev: string | undefined
    let pathParts: Array<string>
    const url = /^https?:\/\/(?:www\.)?(?:huggingface\.co|hf\.co)\/(.*)$/.exec(text)
    if (url !== null) {
      const rest = url[1]!.split("?")[0]!.split("#")[0]!
      const parts = rest.split("/")
      if (parts.length < 5 || parts[2] !== "resolve") {
        return Effect.fail(invalid(input, "a URL must be https://huggingface.co/ORG/REPO/resolve/REV/FILE"))
      }
      org = parts[0]!
      repo = parts[1]!
      rev = decodeURIComponent(parts[3]!)
      pathParts = parts.slice(4)
    } else {
      const bare = text.replace(/^(?:hf\.co|huggingface\.co)\//, "")
      const parts = bare.split("/")
      if (parts.length < 3) return Effect.fail(invalid(input, "needs ORG/REPO/FILE.gguf"))
      org = parts[0]!
      const repoPart = parts[1]!
      const at = repoPart.indexOf("@")
      if (at >= 0) {
        repo = repoPart.slice(0, at)
        rev = repoPart.slice(at + 1)
        if (rev === "") return Effect.fail(invalid(input, "empty revision after @"))
      } else {
        repo = repoPart
      }
      pathParts = parts.slice(2)
      const last = pathParts[pathParts.length - 1]!
      const fileAt = last.lastIndexOf("@")
      if (fileAt >= 0) {
        if (rev !== undefined) return Effect.fail(invalid(input, "two revisions given"))
        rev = last.slice(fileAt + 1)
        if (rev === "") return Effect.fail(invalid(input, "empty revision after @"))
        pathParts[pathParts.length - 1] = last.slice(0, fileAt)
      }
    }
    for (const [what, part] of [["organisation", org], ["repository", repo]] as const) {
      const bad = checkPart(input, what, part)
      if (bad !== undefined) return Effect.fail(bad)
    }
    for (const part of pathParts) {
      const bad = checkPart(input, "path segment", part)
      if (bad !== undefined) return Effect.fail(bad)
    }
    const finalRev = rev ?? "main"
    if (!revision.test(finalRev) || finalRev.split("/").some((p) => p === "" || p === "..")) {
      return Effect.fail(invalid(input, `revision ${JSON.stringify(finalRev)} is not valid`))
    }
    const path = pathParts.join("/")
    if (!path.toLowerCase().endsWith(".gguf")) {
      return Effect.fail(invalid(input, "the file must be a .gguf file"))
    }
    return Effect.succeed({ org, repo, revision: finalRev, path })
  })

/** `hf.co/org/repo@rev/path`: the key records are stored under. */
export const canonicalModelRef = (ref: ModelRef): string =>
  `hf.co/${ref.org}/${ref.repo}@${ref.revision}/${ref.path}`

const encodePath = (path: string) => path.split("/").map(encodeURIComponent).join("/")

/** The hub URL that serves the file's bytes (the hub may redirect it to a CDN). */
export const resolveUrl = (endpoint: string, ref: ModelRef): string =>
  `${endpoint.replace(/\/+$/, "")}/${ref.org}/${ref.repo}/resolve/${encodeURIComponent(ref.revision)}/${
    encodePath(ref.path)
  }`

/** The hub's paths-info API for the file's repository at its revision. */
export const pathsInfoUrl = (endpoint: string, ref: ModelRef): string =>
  `${endpoint.replace(/\/+$/, "")}/api/models/${ref.org}/${ref.repo}/paths-info/${
    encodeURIComponent(ref.revision)
  }`

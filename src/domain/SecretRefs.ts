/**
 * `--secret NAME=env:VAR | file:PATH | dotenv:PATH[:KEY]`: the reference a workspace records. Only the
 * reference is ever stored; the value is read when a start needs it.
 */
import { Effect } from "effect"
import * as NodePath from "node:path"
import { InvalidInput } from "./Errors.ts"
import { SecretRef } from "./Workspace.ts"

export const secretNamePattern = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/
const keyPattern = /^[A-Za-z_][A-Za-z0-9_.-]*$/

const usage = "write --secret NAME=env:VAR, NAME=file:PATH or NAME=dotenv:PATH[:KEY]"

export type SecretSource =
  | { readonly scheme: "env"; readonly variable: string }
  | { readonly scheme: "file"; readonly path: string }
  | { readonly scheme: "dotenv"; readonly path: string; readonly key: string }

const invalid = (message: string, remediation = usage) => new InvalidInput({ message, remediation })

/** The source of a reference, with relative paths taken from `cwd`; a bad one is `InvalidInput`. */
export const parseSource = (name: string, source: string, cwd: string) =>
  Effect.gen(function*() {
    const colon = source.indexOf(":")
    const scheme = colon > 0 ? source.slice(0, colon) : ""
    const ref = source.slice(colon + 1)
    switch (scheme) {
      case "env":
        if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(ref)) {
          return yield* invalid(`secret ${name}: "${ref}" is not an environment variable name`)
        }
        return { scheme, variable: ref } satisfies SecretSource
      case "file":
        if (ref.length === 0) return yield* invalid(`secret ${name}: file: needs a path`)
        return { scheme, path: NodePath.resolve(cwd, ref) } satisfies SecretSource
      case "dotenv": {
        // PATH[:KEY] (or PATH#KEY); the key defaults to the secret's name.
        const split = /^(.+?)[:#]([A-Za-z_][A-Za-z0-9_.-]*)$/.exec(ref)
        const path = split?.[1] ?? ref
        const key = split?.[2] ?? name
        if (path.length === 0) return yield* invalid(`secret ${name}: dotenv: needs a path`)
        if (!keyPattern.test(key)) return yield* invalid(`secret ${name}: "${key}" is not a dotenv key`)
        return { scheme, path: NodePath.resolve(cwd, path), key } satisfies SecretSource
      }
      default:
        return yield* invalid(
          `secret ${name}: unknown source "${source}"${
            scheme === "" ? " (no scheme)" : ` (scheme ${scheme})`
          }`,
          `the schemes are env:, file: and dotenv:; ${usage}`
        )
    }
  })

/** The recorded form of a source: paths made absolute, so a later start from elsewhere reads the same file. */
export const formatSource = (source: SecretSource): string =>
  source.scheme === "env"
    ? `env:${source.variable}`
    : source.scheme === "file"
    ? `file:${source.path}`
    : `dotenv:${source.path}:${source.key}`

export const secretNameProblem = (name: string): string | undefined =>
  secretNamePattern.test(name)
    ? undefined
    : `"${name}" is not a secret name: letters, digits and '_', not starting with a digit, at most 128`

/** Parses one `--secret NAME=SOURCE`. */
export const parseSecretFlag = (text: string, cwd: string) =>
  Effect.gen(function*() {
    const at = text.indexOf("=")
    if (at <= 0) return yield* invalid(`invalid --secret "${text}": no NAME=`)
    const name = text.slice(0, at)
    const problem = secretNameProblem(name)
    if (problem !== undefined) return yield* invalid(`invalid --secret: ${problem}`)
    const source = yield* parseSource(name, text.slice(at + 1), cwd)
    return new SecretRef({ name, source: formatSource(source) })
  })

/** Parses every `--secret`; a name given twice is refused. */
export const parseSecretFlags = (texts: ReadonlyArray<string>, cwd: string) =>
  Effect.gen(function*() {
    const refs = yield* Effect.forEach(texts, (text) => parseSecretFlag(text, cwd))
    const names = refs.map((r) => r.name)
    const twice = names.find((n, i) => names.indexOf(n) !== i)
    if (twice !== undefined) return yield* invalid(`secret ${twice} is given twice`, "give each secret once")
    return refs
  })

/** `base` with `over` replacing the references of the same name. */
export const mergeRefs = (base: ReadonlyArray<SecretRef>, over: ReadonlyArray<SecretRef>) => [
  ...base.filter((ref) => !over.some((o) => o.name === ref.name)),
  ...over
]

/** References as an API caller may send them: sound names and sources, each name once. */
export const validateSecretRefs = (refs: ReadonlyArray<SecretRef> | undefined) =>
  Effect.gen(function*() {
    const seen = new Set<string>()
    for (const ref of refs ?? []) {
      const problem = secretNameProblem(ref.name)
      if (problem !== undefined) return yield* invalid(`invalid secret: ${problem}`)
      if (seen.has(ref.name)) {
        return yield* invalid(`secret ${ref.name} is given twice`, "give each secret once")
      }
      seen.add(ref.name)
      yield* parseSource(ref.name, ref.source, "/")
    }
  })

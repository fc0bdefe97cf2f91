/**
 * Declared outputs (`--output NAME=/guest/path`): parsed and checked wherever they enter.
 */
import { Effect } from "effect"
import { InvalidInput } from "../../domain/Errors.ts"
import { OutputDecl } from "../../domain/Workspace.ts"
import { checkGuestPath } from "./CopyPaths.ts"

/** `NAME=/guest/path`; the name is a file name in the collection, the path absolute without `..`. */
export const parseOutput = (text: string): OutputDecl | InvalidInput => {
  const at = text.indexOf("=")
  const name = at > 0 ? text.slice(0, at) : ""
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(name)) {
    return new InvalidInput({
      message: `invalid --output "${text}"`,
      remediation:
        "write NAME=/guest/path, NAME being letters, digits, '.', '_' and '-', starting with a letter or digit"
    })
  }
  const path = checkGuestPath(text.slice(at + 1))
  if (path instanceof InvalidInput) {
    return new InvalidInput({
      message: `invalid --output "${text}": ${path.message}`,
      remediation: path.remediation
    })
  }
  if (path === "/") {
    return new InvalidInput({
      message: `invalid --output "${text}": / cannot be an output`,
      remediation: "name a file or directory below /"
    })
  }
  return new OutputDecl({ name, path })
}

/** Every declaration valid, and no name twice. */
export const checkOutputs = (outputs: ReadonlyArray<OutputDecl>) =>
  Effect.gen(function*() {
    const seen = new Set<string>()
    for (const output of outputs) {
      const parsed = parseOutput(`${output.name}=${output.path}`)
      if (parsed instanceof InvalidInput) return yield* parsed
      if (seen.has(output.name)) {
        return yield* new InvalidInput({
          message: `output ${output.name} is declared twice`,
          remediation: "give each output its own name"
        })
      }
      seen.add(output.name)
    }
  })

/** The `--output` flags of one command, checked together. */
export const parseOutputs = (texts: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const outputs: Array<OutputDecl> = []
    for (const text of texts) {
      const parsed = parseOutput(text)
      if (parsed instanceof InvalidInput) return yield* parsed
      outputs.push(parsed)
    }
    yield* checkOutputs(outputs)
    return outputs
  })

/** A spec's `outputs` and the `--output` flags, checked as one set. */
export const allOutputsOf = (
  spec: { readonly outputs?: ReadonlyArray<{ name: string; path: string }> | undefined },
  texts: ReadonlyArray<string>
) =>
  Effect.gen(function*() {
    const outputs = [
      ...(spec.outputs ?? []).map((o) => new OutputDecl({ name: o.name, path: o.path })),
      ...(yield* parseOutputs(texts))
    ]
    yield* checkOutputs(outputs)
    return outputs
  })

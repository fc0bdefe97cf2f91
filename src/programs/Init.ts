/**
 * `init`: writes an agent scaffold (internal/Scaffold.ts) into `dir/name`. Existing files are never
 * overwritten without `force`: the conflict names each one and nothing is written.
 */
import { Effect, Schema } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Conflict, InvalidInput, Permanent } from "../domain/Errors.ts"
import { nameProblem } from "../domain/Workspace.ts"
import { type Provider, providers, providerShape, scaffoldFiles } from "./internal/Scaffold.ts"

export const InitProvider = Schema.Literal(...providers)

export interface InitOptions {
  readonly name: string
  readonly provider?: Provider | undefined
  /** The parent directory (default: the working directory); the scaffold goes into `dir/name`. */
  readonly dir?: string | undefined
  readonly force?: boolean | undefined
}

export const InitResult = Schema.Struct({
  name: Schema.String,
  provider: InitProvider,
  directory: Schema.String,
  /** The variable (and secret name) the agent reads its API key from. */
  apiKeyEnv: Schema.String,
  /** Relative to `directory`. */
  files: Schema.Array(Schema.String),
  /** Files that were there and were replaced (`force`). */
  overwritten: Schema.Array(Schema.String)
})
export type InitResult = typeof InitResult.Type

export const init = Effect.fn("init")(function*(options: InitOptions) {
  const problem = nameProblem(options.name)
  if (problem !== undefined) {
    return yield* new InvalidInput({
      message: `invalid agent name: ${problem}`,
      remediation: "the name is also the workspace's: 1-63 letters, digits, '.', '_' and '-'"
    })
  }
  const provider = options.provider ?? "anthropic"
  const directory = NodePath.resolve(options.dir ?? process.cwd(), options.name)
  const files = scaffoldFiles(options.name, provider)
  const existing = files.map((f) => f.path).filter((path) =>
    NodeFs.existsSync(NodePath.join(directory, path))
  )
  if (existing.length > 0 && options.force !== true) {
    return yield* new Conflict({
      message: `${directory} already holds ${existing.join(", ")}; nothing was written`,
      remediation: "choose another name or --dir, or pass --force to overwrite them"
    })
  }
  yield* Effect.try({
    try: () => {
      for (const file of files) {
        const target = NodePath.join(directory, file.path)
        NodeFs.mkdirSync(NodePath.dirname(target), { recursive: true })
        NodeFs.writeFileSync(target, file.content, { mode: file.mode })
        // An overwritten file keeps its old mode otherwise.
        NodeFs.chmodSync(target, file.mode)
      }
    },
    catch: (cause) =>
      new Permanent({
        message: `cannot write the scaffold into ${directory}: ${
          cause instanceof Error ? cause.message : String(cause)
        }`,
        remediation: "check that the directory is writable"
      })
  })
  return {
    name: options.name,
    provider,
    directory,
    apiKeyEnv: providerShape(provider).keyVar,
    files: files.map((f) => f.path),
    overwritten: existing
  } satisfies InitResult
})

/**
 * Resolves secret references in this process: `env:` from this process's environment (so it must run
 * in the process of the user who typed the command), `file:` and `dotenv:` from files. Values stay in
 * memory, wrapped in `Redacted` so they never print; nothing is written anywhere.
 */
import { Effect, Layer, Redacted } from "effect"
import * as NodeFs from "node:fs"
import { InvalidInput } from "../../domain/Errors.ts"
import { parseSource, secretNameProblem, type SecretSource } from "../../domain/SecretRefs.ts"
import { Secrets, type SecretsShape } from "../../services/Secrets.ts"

/** The agent's tmpfs is 16 MiB; one secret may take at most 1 MiB of it. */
const maxSecretBytes = 1024 * 1024

const failed = (name: string, why: string, remediation: string) =>
  new InvalidInput({ message: `secret ${name}: ${why}`, remediation })

const readFile = (name: string, path: string) =>
  Effect.try({
    try: () => {
      const stat = NodeFs.statSync(path)
      if (!stat.isFile()) throw new Error(`${path} is not a regular file`)
      if (stat.size > maxSecretBytes) throw new Error(`${path} is larger than ${maxSecretBytes} bytes`)
      return NodeFs.readFileSync(path)
    },
    catch: (cause) =>
      failed(
        name,
        `cannot read ${path}: ${
          cause instanceof Error ? cause.message.replace(/^[A-Z]+: /, "") : String(cause)
        }`,
        "check that the file exists and that you may read it"
      )
  })

/** One value of a dotenv file: `KEY=value`, `export KEY=value`, single or double quotes, `#` comments. */
export const dotenvValue = (text: string, key: string): string | undefined => {
  let found: string | undefined
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim()
    if (line.length === 0 || line.startsWith("#")) continue
    const match = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*)$/.exec(line)
    if (match === null || match[1] !== key) continue
    const value = match[2]!
    if (value.startsWith("'")) {
      found = value.slice(1, value.indexOf("'", 1) >= 1 ? value.indexOf("'", 1) : undefined)
    } else if (value.startsWith('"')) {
      const end = value.indexOf('"', 1)
      found = value.slice(1, end >= 1 ? end : undefined).replace(/\\n/g, "\n").replace(/\\"/g, '"')
        .replace(/\\\\/g, "\\")
    } else found = value.replace(/\s+#.*$/, "")
  }
  return found
}

const valueOf = (name: string, source: SecretSource) =>
  Effect.gen(function*() {
    switch (source.scheme) {
      case "env": {
        const value = process.env[source.variable]
        if (value === undefined) {
          return yield* failed(
            name,
            `environment variable ${source.variable} is not set`,
            `export ${source.variable}=… in the shell that runs microagent`
          )
        }
        return new Uint8Array(Buffer.from(value, "utf8"))
      }
      case "file":
        return new Uint8Array(yield* readFile(name, source.path))
      case "dotenv": {
        const text = (yield* readFile(name, source.path)).toString("utf8")
        const value = dotenvValue(text, source.key)
        if (value === undefined) {
          return yield* failed(
            name,
            `${source.path} has no key ${source.key}`,
            `add ${source.key}=… to the file, or name another key: dotenv:PATH:KEY`
          )
        }
        return new Uint8Array(Buffer.from(value, "utf8"))
      }
    }
  })

export const make: SecretsShape = {
  resolve: (specs) =>
    Effect.forEach(specs, (spec) =>
      Effect.gen(function*() {
        const problem = secretNameProblem(spec.name)
        if (problem !== undefined) return yield* failed(spec.name, problem, "rename the secret")
        // Recorded sources are absolute; a relative one is taken from this process's directory.
        const source = yield* parseSource(spec.name, spec.source, process.cwd())
        const value = yield* valueOf(spec.name, source)
        if (value.length === 0) {
          return yield* failed(
            spec.name,
            `the value from ${spec.source} is empty`,
            "an empty secret is refused: give it a value"
          )
        }
        return { name: spec.name, value: Redacted.make(value) }
      }))
}

export const layer = Layer.succeed(Secrets, Secrets.of(make))

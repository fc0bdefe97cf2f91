/**
 * `--secret` references and their resolution in the calling process: env, file and dotenv sources,
 * the failures that must stop a start before boot, and values that never print.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Either, Redacted } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import {
  mergeRefs,
  parseSecretFlag,
  parseSecretFlags,
  validateSecretRefs
} from "../../src/domain/SecretRefs.ts"
import { SecretRef } from "../../src/domain/Workspace.ts"
import { dotenvValue, make } from "../../src/layers/secrets/SecretsLive.ts"

const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-secrets-"))
const file = NodePath.join(dir, "token")
NodeFs.writeFileSync(file, "file-value\n")
const dotenv = NodePath.join(dir, ".env")
NodeFs.writeFileSync(
  dotenv,
  "# comment\nAPI_KEY=plain\nexport QUOTED=\"two\\nlines\"\nSINGLE='s v' \nEMPTY=\n"
)
NodeFs.writeFileSync(NodePath.join(dir, "empty"), "")

const parse = (text: string) => Effect.runSync(parseSecretFlag(text, dir))
const resolve = (refs: ReadonlyArray<SecretRef>) => Effect.runSync(Effect.either(make.resolve(refs)))
const value = (ref: SecretRef) => {
  const result = resolve([ref])
  assert.isTrue(Either.isRight(result), Either.isLeft(result) ? result.left.message : "")
  return Buffer.from(Redacted.value(Either.getOrThrow(result)[0]!.value)).toString("utf8")
}
const failure = (ref: SecretRef) => {
  const result = resolve([ref])
  assert.isTrue(Either.isLeft(result), `expected ${ref.source} to fail`)
  const error = Either.getOrThrow(Either.flip(result))
  assert.strictEqual(error._tag, "InvalidInput")
  return error.message
}

describe("--secret", () => {
  it("records references only, with paths made absolute", () => {
    assert.deepStrictEqual(parse("TOKEN=env:MY_VAR"), new SecretRef({ name: "TOKEN", source: "env:MY_VAR" }))
    assert.deepStrictEqual(
      parse("TOKEN=file:token"),
      new SecretRef({ name: "TOKEN", source: `file:${file}` })
    )
    assert.deepStrictEqual(
      parse("API_KEY=dotenv:.env"),
      new SecretRef({ name: "API_KEY", source: `dotenv:${dotenv}:API_KEY` })
    )
    assert.deepStrictEqual(
      parse("K=dotenv:.env:QUOTED"),
      new SecretRef({ name: "K", source: `dotenv:${dotenv}:QUOTED` })
    )
    assert.deepStrictEqual(parse("K=dotenv:.env#SINGLE").source, `dotenv:${dotenv}:SINGLE`)
  })

  it("refuses bad names, unknown schemes and names given twice", () => {
    const bad = (text: string) => Effect.runSync(Effect.either(parseSecretFlag(text, dir)))
    assert.isTrue(Either.isLeft(bad("1X=env:A")))
    assert.isTrue(Either.isLeft(bad("a/b=env:A")))
    assert.isTrue(Either.isLeft(bad("X=vault:secret/x")))
    assert.isTrue(Either.isLeft(bad("X=plain")))
    assert.isTrue(Either.isLeft(bad("=env:A")))
    assert.isTrue(Either.isLeft(Effect.runSync(Effect.either(parseSecretFlags(["A=env:X", "A=env:Y"], dir)))))
    assert.isTrue(
      Either.isLeft(
        Effect.runSync(Effect.either(validateSecretRefs([new SecretRef({ name: "A-B", source: "env:X" })])))
      )
    )
  })

  it("resolves env, file and dotenv sources into memory, redacted", () => {
    process.env.MA_TEST_SECRET = "from-env"
    assert.strictEqual(value(new SecretRef({ name: "A", source: "env:MA_TEST_SECRET" })), "from-env")
    assert.strictEqual(value(new SecretRef({ name: "A", source: `file:${file}` })), "file-value\n")
    assert.strictEqual(value(new SecretRef({ name: "A", source: `dotenv:${dotenv}:API_KEY` })), "plain")
    assert.strictEqual(value(new SecretRef({ name: "A", source: `dotenv:${dotenv}:QUOTED` })), "two\nlines")
    assert.strictEqual(value(new SecretRef({ name: "A", source: `dotenv:${dotenv}:SINGLE` })), "s v")
    const [resolved] = Either.getOrThrow(
      resolve([new SecretRef({ name: "A", source: "env:MA_TEST_SECRET" })])
    )
    assert.notInclude(String(resolved!.value), "from-env")
    assert.notInclude(JSON.stringify(resolved), "from-env")
  })

  it("fails on a missing variable, an unreadable file, a missing key, an empty value", () => {
    delete process.env.MA_TEST_UNSET
    assert.match(
      failure(new SecretRef({ name: "A", source: "env:MA_TEST_UNSET" })),
      /MA_TEST_UNSET is not set/
    )
    assert.match(failure(new SecretRef({ name: "A", source: `file:${dir}/nope` })), /cannot read/)
    assert.match(failure(new SecretRef({ name: "A", source: `file:${dir}` })), /not a regular file/)
    assert.match(failure(new SecretRef({ name: "A", source: `dotenv:${dotenv}:NOPE` })), /has no key NOPE/)
    assert.match(failure(new SecretRef({ name: "A", source: `dotenv:${dotenv}:EMPTY` })), /empty/)
    assert.match(failure(new SecretRef({ name: "A", source: `file:${dir}/empty` })), /empty/)
    assert.match(failure(new SecretRef({ name: "no-dash", source: "env:X" })), /not a secret name/)
  })

  it("parses dotenv files: the last assignment wins, comments and export are skipped", () => {
    assert.strictEqual(dotenvValue("A=1\nA=2\n", "A"), "2")
    assert.strictEqual(dotenvValue("export A = x # note\n", "A"), "x")
    assert.strictEqual(dotenvValue("#A=1\n", "A"), undefined)
  })

  it("start's --secret replaces the recorded reference of the same name", () => {
    const merged = mergeRefs(
      [new SecretRef({ name: "A", source: "env:X" }), new SecretRef({ name: "B", source: "env:Y" })],
      [new SecretRef({ name: "A", source: "env:Z" })]
    )
    assert.deepStrictEqual(merged.map((r) => `${r.name}=${r.source}`), ["B=env:Y", "A=env:Z"])
  })
})

/**
 * The `-v/--volume` parser: what a source is, where it goes, and the guided refusals.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import {
  parseMountFlag,
  parseMountFlags,
  validateMounts,
  volumeNameProblem
} from "../../src/domain/MountFlag.ts"
import { Mount } from "../../src/domain/Workspace.ts"

const cwd = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-mountflag-"))
NodeFs.writeFileSync(NodePath.join(cwd, "bundle.tar"), "")
NodeFs.writeFileSync(NodePath.join(cwd, "bundle.tgz"), "")
NodeFs.writeFileSync(NodePath.join(cwd, "disk.img"), "")
NodeFs.mkdirSync(NodePath.join(cwd, "somedir"))

const parse = (text: string) => Effect.runSync(parseMountFlag(text, cwd))
const refusal = (text: string) => {
  const result = Effect.runSync(Effect.either(parseMountFlag(text, cwd)))
  assert.isTrue(Either.isLeft(result), `expected ${text} to be refused`)
  const error = Either.getOrThrow(Either.flip(result))
  assert.strictEqual(error._tag, "InvalidInput")
  return error
}

describe("-v/--volume", () => {
  it("a bare name is a named volume, read-write unless :ro", () => {
    assert.deepStrictEqual(
      parse("data:/data"),
      new Mount({ kind: "volume", source: "data", target: "/data", readOnly: false })
    )
    assert.strictEqual(parse("data:/data:ro").readOnly, true)
    assert.strictEqual(parse("data:/data:rw").readOnly, false)
    assert.strictEqual(parse("data:/srv/data/").target, "/srv/data")
  })

  it("bundles and images by their endings, made absolute from the caller's directory", () => {
    assert.deepStrictEqual(
      parse("bundle.tar:/in"),
      new Mount({ kind: "bundle", source: NodePath.join(cwd, "bundle.tar"), target: "/in", readOnly: false })
    )
    assert.strictEqual(parse("./bundle.tgz:/in:ro").kind, "bundle")
    assert.strictEqual(parse(`${cwd}/disk.img:/disk`).kind, "image")
  })

  it("refuses host directories with guidance to tar or copy", () => {
    const error = refusal("somedir:/data")
    assert.match(error.message, /host directories cannot be mounted/)
    assert.match(error.remediation, /tar -cf/)
    assert.match(error.remediation, /microagent cp/)
    assert.match(refusal(`${cwd}/somedir:/data`).message, /host directories/)
  })

  it("refuses bad guest paths", () => {
    assert.match(refusal("data:/").message, /cannot be \//)
    assert.match(refusal("data:/a/../b").message, /'\.\.'/)
    assert.match(refusal("data:relative").message, /no SOURCE:\/guest\/path/)
    assert.match(refusal("data:/with space").message, /whitespace/)
    assert.match(refusal("data:/a,b").message, /','/)
  })

  it("refuses bad volume names naming the rule, and missing files", () => {
    assert.match(refusal("Data:/data").message, /uppercase/)
    assert.match(refusal("a..b:/data").message, /'\.\.'/)
    assert.match(refusal("no/such:/data").message, /not a volume name/)
    assert.match(refusal("missing.tar:/data").message, /is not a file/)
    assert.strictEqual(volumeNameProblem("ok-name-1"), undefined)
    assert.match(volumeNameProblem("a/b") ?? "", /contains '\/'/)
    assert.match(volumeNameProblem("-x") ?? "", /not a volume name/)
    assert.match(volumeNameProblem("x".repeat(64)) ?? "", /longer than 63/)
  })

  it("refuses two mounts on one path, and one disk twice", () => {
    const twice = Effect.runSync(Effect.either(parseMountFlags(["a:/data", "b:/data"], cwd)))
    assert.isTrue(Either.isLeft(twice))
    const same = Effect.runSync(Effect.either(parseMountFlags(["a:/one", "a:/two:ro"], cwd)))
    assert.isTrue(Either.isLeft(same))
    assert.strictEqual(Effect.runSync(parseMountFlags(["a:/one", "b:/two"], cwd)).length, 2)
  })

  it("checks mounts an API caller sends as they are recorded", () => {
    const check = (mount: Mount) => Effect.runSync(Effect.either(validateMounts([mount])))
    assert.isTrue(
      Either.isLeft(check(new Mount({ kind: "bundle", source: "rel.tar", target: "/x", readOnly: false })))
    )
    assert.isTrue(
      Either.isLeft(
        check(new Mount({ kind: "image", source: "/abs/file.tar", target: "/x", readOnly: false }))
      )
    )
    assert.isTrue(
      Either.isLeft(check(new Mount({ kind: "volume", source: "UP", target: "/x", readOnly: false })))
    )
    assert.isTrue(
      Either.isRight(check(new Mount({ kind: "image", source: "/abs/d.ext4", target: "/x", readOnly: true })))
    )
  })
})

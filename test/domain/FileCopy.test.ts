import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Option } from "effect"
import { FileCopy, parseFileCopy, validateFileCopies } from "../../src/domain/FileCopy.ts"

const refusal = (exit: Exit.Exit<unknown, { readonly _tag: string; readonly message: string }>) => {
  assert.isTrue(Exit.isFailure(exit), "expected a refusal")
  const error = Exit.isFailure(exit) ? Option.getOrThrow(Cause.failureOption(exit.cause)) : undefined
  assert.strictEqual(error?._tag, "InvalidInput")
  return error?.message ?? ""
}

describe("--file-copy and files", () => {
  it.effect("parses SRC:DST[:MODE], SRC relative to the base directory", () =>
    Effect.gen(function*() {
      const plain = yield* parseFileCopy("in/a.txt:/work/a.txt", "/home/u")
      assert.deepStrictEqual({ ...plain }, { source: "/home/u/in/a.txt", target: "/work/a.txt" })
      const moded = yield* parseFileCopy("/x/run.sh:/usr/local/bin/run:0755", "/")
      assert.strictEqual(moded.mode, 0o755)
      refusal(yield* Effect.exit(parseFileCopy("only-a-source", "/")))
      refusal(yield* Effect.exit(parseFileCopy(":/a", "/")))
    }))

  it.effect("refuses relative, root and repeated targets", () =>
    Effect.gen(function*() {
      const file = (target: string) => new FileCopy({ source: "/h/f", target })
      yield* validateFileCopies([file("/a"), file("/b/c")])
      assert.include(
        refusal(yield* Effect.exit(validateFileCopies([file("rel/a")]))),
        "not an absolute guest path"
      )
      assert.include(refusal(yield* Effect.exit(validateFileCopies([file("/")]))), "guest's /")
      assert.include(
        refusal(yield* Effect.exit(validateFileCopies([file("/a/b"), file("/a//b/")]))),
        "/a/b is given more than once"
      )
    }))
})

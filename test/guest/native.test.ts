/**
 * The C side's own checks, run from the fast tier: the codec unit tests and shared vectors
 * (`make -C guest test`), and a replay of the fuzz corpus under ASan/UBSan. The timed fuzzing
 * run itself (`make -C guest fuzz FUZZ_SECONDS=60`) belongs to CI.
 */
import { assert, describe, it } from "@effect/vitest"
import { execFileSync } from "node:child_process"
import { existsSync, readdirSync } from "node:fs"
import { join } from "node:path"
import { guestDir } from "./agent.ts"

const run = (args: Array<string>, hint: string): string => {
  try {
    return execFileSync("make", ["-s", "-C", guestDir, ...args], { encoding: "utf8", stdio: "pipe" })
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string }
    throw new Error(`make ${args.join(" ")} failed (${hint}):\n${err.stdout ?? ""}${err.stderr ?? ""}`)
  }
}

describe("guest C tests", () => {
  it("codec unit tests and shared vectors pass", () => {
    const out = run(["test"], "needs build-essential")
    const m = /(\d+) passed, (\d+) failed/.exec(out)
    assert.isNotNull(m, out)
    assert.strictEqual(m![2], "0")
    assert.isAbove(Number(m![1]), 50)
  }, 120_000)

  it("the fuzz corpus replays cleanly under the sanitizers", () => {
    assert.isAbove(readdirSync(join(guestDir, "fuzz/corpus")).length, 50)
    run(["build/fuzz_frame"], "needs clang and libclang-rt-14-dev")
    assert.isTrue(existsSync(join(guestDir, "build/fuzz_frame")))
    execFileSync(join(guestDir, "build/fuzz_frame"), ["-runs=0", join(guestDir, "fuzz/corpus")], {
      stdio: "pipe"
    })
  }, 120_000)
})

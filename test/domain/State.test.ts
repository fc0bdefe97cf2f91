import { describe, it } from "@effect/vitest"
import { assert } from "@effect/vitest"
import { Either } from "effect"
import { canTransition, State, Transition, transition, transitions } from "../../src/domain/State.ts"

describe("state machine", () => {
  const states = State.literals
  const all = Transition.literals

  it("has a rule for every transition", () => {
    assert.deepStrictEqual(Object.keys(transitions).sort(), [...all].sort())
  })

  for (const t of all) {
    for (const from of states) {
      const legal = transitions[t].from.includes(from)
      it(`${t} from ${from} is ${legal ? "legal" : "a conflict"}`, () => {
        const result = transition("w1", from, t)
        assert.strictEqual(canTransition(from, t), legal)
        if (legal) {
          assert.deepStrictEqual(result, Either.right(transitions[t].to))
        } else {
          assert.isTrue(Either.isLeft(result))
          const error = Either.getOrThrow(Either.flip(result))
          assert.strictEqual(error._tag, "Conflict")
          assert.strictEqual(error.kind, "conflict")
          assert.include(error.message, `workspace w1 from state ${from}`)
          assert.isAbove(error.remediation.length, 0)
        }
      })
    }
  }

  it("follows the documented lifecycle", () => {
    const walk = (from: State, ...steps: ReadonlyArray<Transition>) =>
      steps.reduce((state, step) => Either.getOrThrow(transition("w", state, step)), from)
    assert.strictEqual(walk("prepared", "start", "booted", "halt", "halted", "start", "booted"), "running")
    assert.strictEqual(walk("running", "pause", "resume", "kill"), "stopped")
    assert.strictEqual(walk("stopped", "start", "bootFailed", "start", "booted", "crashed"), "failed")
  })
})

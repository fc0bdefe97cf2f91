import { Effect } from "effect"
import { Microagent } from "microagent"
import * as assert from "node:assert/strict"
import { agentStep } from "./agent.js"

// The application's own test: the fake backend in a temporary state directory, removed afterwards.
const stdout = await Effect.runPromise(agentStep.pipe(Effect.provide(Microagent.layerTest())))
assert.equal(stdout, "hello from sh\n")
console.log("agentStep: ok")

import { Effect } from "effect"
import { Microagent } from "microagent"
import { agentStep } from "./agent.js"

// The state directory: $MICROAGENT_HOME, else ~/.microagent. The backend: $MICROAGENT_BACKEND, else qemu.
const backend = process.env.MICROAGENT_BACKEND === "fake" ? "fake" : "qemu"

const stdout = await Effect.runPromise(agentStep.pipe(Effect.provide(Microagent.layer({ backend }))))
console.log(stdout.trim())

/**
 * `init` for the Promise API: writes an agent scaffold (spec, agent script, system prompt, README, demo
 * input) into `dir/name`. It touches no state directory, so it needs no Host.
 */
import { Effect, Exit } from "effect"
import { init as initProgram, type InitOptions, type InitResult } from "../programs/Init.ts"
import { fromCause } from "./MicroagentError.ts"

export type { InitOptions, InitResult } from "../programs/Init.ts"

/** Rejects `conflict` (naming the files) when the scaffold's files exist and `force` is not set. */
export const init = async (options: InitOptions): Promise<InitResult> => {
  const exit = await Effect.runPromiseExit(initProgram(options))
  if (Exit.isSuccess(exit)) return exit.value
  throw fromCause(exit.cause)
}

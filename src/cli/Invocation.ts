/**
 * What the command line said before @effect/cli parses it: the global flags (accepted before or after
 * the verb) and, for `run` and `exec`, the guest's argv, which is passed on verbatim.
 */
import { Context } from "effect"
import type { Backend } from "../domain/Workspace.ts"

export interface InvocationShape {
  readonly json: boolean | undefined
  readonly stateDir: string | undefined
  readonly backend: Backend | undefined
  /** `--cluster URL` or MICROAGENT_CLUSTER: the PostgreSQL URL of a cluster to work through. */
  readonly cluster?: string | undefined
  readonly noColor: boolean
  readonly guestArgv: ReadonlyArray<string>
}

export class Invocation extends Context.Tag("microagent/cli/Invocation")<Invocation, InvocationShape>() {}

/**
 * Starting the runtime on demand: a command that needs it connects to the state directory's runtime
 * socket, and if nobody answers, starts a detached runtime process and waits for it to listen. Several
 * commands may do so at once; the runtime lock lets one runtime win and the others exit.
 */
import { Duration, Effect, Schedule } from "effect"
import { spawn } from "node:child_process"
import * as NodeFs from "node:fs"
import * as Net from "node:net"
import * as NodePath from "node:path"
import { Transient } from "../domain/Errors.ts"
import type { HomeShape } from "../services/Home.ts"

/** Whether something accepts connections on the socket. */
export const answers = (socket: string) =>
  Effect.async<boolean>((resume) => {
    const connection = Net.createConnection({ path: socket })
    connection.once("connect", () => {
      connection.destroy()
      resume(Effect.succeed(true))
    })
    connection.once("error", () => resume(Effect.succeed(false)))
  })

/**
 * The command that starts a runtime (the CLI's hidden `runtime` verb). From the CLI itself that is the
 * running script. A host application that uses the library runs its own script, so it uses
 * `$MICROAGENT_CLI` when set, else the `microagent` command on the PATH (the README's set-up links it).
 */
export const runtimeCommand = (): { readonly command: string; readonly args: ReadonlyArray<string> } => {
  const script = process.argv[1] ?? ""
  const fromEnv = process.env.MICROAGENT_CLI
  if (fromEnv !== undefined && fromEnv !== "") return { command: process.execPath, args: [fromEnv] }
  if (/^microagent(-main)?\.mjs$/.test(NodePath.basename(script))) {
    return { command: process.execPath, args: [script] }
  }
  return { command: "microagent", args: [] }
}

export const runtimeLogPath = (home: HomeShape) => NodePath.join(home.root, "run", "runtime.log")

/** Ensures a runtime listens on the home's socket, starting one if needed. */
export const ensureRuntime = (home: HomeShape, options: { readonly timeout?: Duration.DurationInput } = {}) =>
  Effect.gen(function*() {
    if (yield* answers(home.runtimeSocket)) return
    yield* Effect.sync(() => {
      const log = NodeFs.openSync(runtimeLogPath(home), "a", 0o600)
      const { args, command } = runtimeCommand()
      const child = spawn(command, [...args, "runtime", "--state-dir", home.root], {
        detached: true,
        stdio: ["ignore", log, log],
        env: { ...process.env, MICROAGENT_OUTPUT: "json" }
      })
      // Not found: the wait below fails naming the log, where this line says what to do.
      child.once("error", (error) => {
        NodeFs.appendFileSync(
          runtimeLogPath(home),
          `cannot start the runtime with \`${command}\`: ${error.message}; put microagent on the PATH (scripts/setup.sh links it) or set MICROAGENT_CLI to its bin/microagent.mjs\n`
        )
      })
      child.unref()
      NodeFs.closeSync(log)
    })
    const timeout = options.timeout ?? Duration.seconds(15)
    yield* answers(home.runtimeSocket).pipe(
      Effect.filterOrFail((up) => up, () => "down" as const),
      Effect.retry(Schedule.spaced(Duration.millis(25))),
      Effect.timeoutFail({
        duration: timeout,
        onTimeout: () =>
          new Transient({
            message: `the runtime did not start within ${Duration.format(timeout)}`,
            remediation: `see ${runtimeLogPath(home)}`,
            retryAfterMs: 1000
          })
      }),
      Effect.catchIf((e) => e === "down", () => Effect.void)
    )
  })

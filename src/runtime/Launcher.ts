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

/** The script that runs the CLI (the main bundle), which has the hidden `runtime` verb. */
const cliScript = () => process.argv[1] ?? ""

export const runtimeLogPath = (home: HomeShape) => NodePath.join(home.root, "run", "runtime.log")

/** Ensures a runtime listens on the home's socket, starting one if needed. */
export const ensureRuntime = (home: HomeShape, options: { readonly timeout?: Duration.DurationInput } = {}) =>
  Effect.gen(function*() {
    if (yield* answers(home.runtimeSocket)) return
    yield* Effect.sync(() => {
      const log = NodeFs.openSync(runtimeLogPath(home), "a", 0o600)
      const child = spawn(process.execPath, [cliScript(), "runtime", "--state-dir", home.root], {
        detached: true,
        stdio: ["ignore", log, log],
        env: { ...process.env, MICROAGENT_OUTPUT: "json" }
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

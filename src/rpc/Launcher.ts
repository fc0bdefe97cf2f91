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
import * as NodeUrl from "node:url"
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

/** The script that runs the CLI when it is the running one (the bundle, or its first stage). */
const cliScript = (): string | undefined => {
  const script = process.argv[1] ?? ""
  return /^microagent(-main)?\.mjs$/.test(NodePath.basename(script)) ? script : undefined
}

/**
 * The runtime's own bundle, beside this module once built (bin/microagent-runtime.mjs), or in the
 * package's bin/ when this module is the package's compiled library: it loads only the runtime, not the
 * CLI. Run from source, there is none, and the CLI's `runtime` verb serves.
 */
const runtimeScript = (): string | undefined => {
  const here = NodePath.dirname(NodeUrl.fileURLToPath(import.meta.url))
  const candidates = [NodePath.join(here, "microagent-runtime.mjs")]
  // The installed package's compiled library (dist/runtime/): the bundle ships in the package's bin/.
  if (NodePath.basename(NodePath.dirname(here)) === "dist") {
    candidates.push(NodePath.join(here, "..", "..", "bin", "microagent-runtime.mjs"))
  }
  return candidates.find((path) => NodeFs.existsSync(path))
}

/**
 * V8 flags of the runtime process: --expose-gc lets it return the Buffers of a boot or a build to the
 * system once they are garbage (RuntimeMain.ts), and one-MiB semi-spaces keep the young generation from
 * growing to 32 MiB of mostly empty pages in a process that allocates little between requests.
 * --jitless keeps V8 from compiling machine code at all (the interpreter runs every function): in a
 * long-lived runtime its compilers' code (baseline, then optimised) was most of the growth of RSS over
 * a soak of `run`s, which no JavaScript object count explains, and with it RSS stays flat; the runtime
 * waits on guests and sockets, so interpreting costs it ~15% more CPU time per `run` and no time a
 * caller sees. --jitless turns WebAssembly off (--no-expose-wasm says so, which spares the log V8's
 * warning), so the runtime must not use `fetch` (undici's HTTP parser is WebAssembly, and failing to
 * load it ends the process): its HTTP clients are node's own.
 */
export const runtimeNodeFlags = [
  "--expose-gc",
  "--max-semi-space-size=1",
  "--jitless",
  "--no-expose-wasm"
] as const

/** Set (to "1") beside MALLOC_ARENA_MAX when the launcher chose that value, so the runtime can drop it. */
const arenaMarker = "MICROAGENT_RUNTIME_MALLOC_ARENA"

/**
 * The runtime's environment: glibc gives each thread that allocates (V8's compiler and GC workers,
 * libuv's pool) a malloc arena of its own, and those arenas hold on to freed memory; over a soak of
 * `run`s they added ~7 MiB in the first 50 runs against ~2 MiB with a single arena, which returns its
 * free top to the system. glibc reads the variable at exec, so the runtime removes it again
 * (`dropRuntimeMallocSetting`) before it starts QEMU or any tool. A value the user set is left alone.
 */
export const runtimeEnvironment = (env: NodeJS.ProcessEnv): NodeJS.ProcessEnv =>
  env.MALLOC_ARENA_MAX !== undefined
    ? { ...env, MICROAGENT_OUTPUT: "json" }
    : { ...env, MICROAGENT_OUTPUT: "json", MALLOC_ARENA_MAX: "1", [arenaMarker]: "1" }

/** In the runtime: forget the launcher's MALLOC_ARENA_MAX, so the processes it starts get their default. */
export const dropRuntimeMallocSetting = () => {
  if (process.env[arenaMarker] !== "1") return
  delete process.env.MALLOC_ARENA_MAX
  delete process.env[arenaMarker]
}

/**
 * The command that starts a runtime for `root`: the runtime's own bundle when this module is part of
 * the built package; else the CLI's `runtime` verb, from the running CLI, from `$MICROAGENT_CLI`, or
 * (a host application running its own script) the `microagent` command on the PATH, which the README's
 * set-up links.
 */
export const runtimeCommand = (
  root: string
): { readonly command: string; readonly args: ReadonlyArray<string> } => {
  const own = runtimeScript()
  if (own !== undefined) {
    return { command: process.execPath, args: [...runtimeNodeFlags, own, "--state-dir", root] }
  }
  const fromEnv = process.env.MICROAGENT_CLI
  const cli = fromEnv !== undefined && fromEnv !== "" ? fromEnv : cliScript()
  return cli === undefined
    ? { command: "microagent", args: ["runtime", "--state-dir", root] }
    : { command: process.execPath, args: [...runtimeNodeFlags, cli, "runtime", "--state-dir", root] }
}

const runtimeLogPath = (home: HomeShape) => NodePath.join(home.root, "run", "runtime.log")

/** Ensures a runtime listens on the home's socket, starting one if needed. */
export const ensureRuntime = (home: HomeShape, options: { readonly timeout?: Duration.DurationInput } = {}) =>
  Effect.gen(function*() {
    if (yield* answers(home.runtimeSocket)) return
    yield* Effect.sync(() => {
      const log = NodeFs.openSync(runtimeLogPath(home), "a", 0o600)
      const { args, command } = runtimeCommand(home.root)
      const child = spawn(command, args, {
        detached: true,
        stdio: ["ignore", log, log],
        env: runtimeEnvironment(process.env)
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

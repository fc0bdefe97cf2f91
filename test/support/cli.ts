/**
 * Runs the bundled CLI as a separate process, the way users and scripts do.
 */
import { spawn, spawnSync } from "node:child_process"
import { readFileSync } from "node:fs"
import * as NodePath from "node:path"
import { join } from "node:path"

export const binPath = NodePath.resolve(import.meta.dirname, "../../bin/microagent.mjs")

export interface CliResult {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

export interface CliOptions {
  readonly stateDir: string
  readonly env?: Record<string, string>
  readonly input?: string
}

const environment = (options: CliOptions) => ({
  ...process.env,
  MICROAGENT_HOME: options.stateDir,
  MICROAGENT_OUTPUT: "",
  NO_COLOR: "1",
  // A runtime outlives the gap between a test's commands: with a shorter idle time, on a loaded host
  // (where starting the CLI alone takes seconds) every command found its runtime gone and waited for a
  // new one to start, several times the command's own cost. Tests stop the runtimes they start
  // (`stopRuntime`), and a runtime whose state directory is removed exits by itself.
  MICROAGENT_RUNTIME_IDLE_SECONDS: "30",
  ...options.env
})

export const cli = (args: ReadonlyArray<string>, options: CliOptions): CliResult => {
  const result = spawnSync(process.execPath, [binPath, ...args], {
    env: environment(options),
    input: options.input ?? "",
    encoding: "utf8",
    maxBuffer: 256 * 1024 * 1024,
    timeout: 60_000
  })
  return { code: result.status ?? -1, stdout: result.stdout, stderr: result.stderr }
}

/**
 * Like `cli`, without blocking the test worker: for long commands (a blocked worker misses vitest's
 * own heartbeats) and for commands raced against each other.
 */
export const cliAsync = (args: ReadonlyArray<string>, options: CliOptions): Promise<CliResult> =>
  cliProcess(args, options).result

/** A CLI process under way: `child` to signal it (Ctrl-C is SIGINT), `result` once it ends. */
export const cliProcess = (args: ReadonlyArray<string>, options: CliOptions) => {
  const child = spawn(process.execPath, [binPath, ...args], {
    env: environment(options),
    stdio: ["pipe", "pipe", "pipe"]
  })
  child.stdin.end(options.input ?? "")
  let stdout = ""
  let stderr = ""
  child.stdout.on("data", (d) => (stdout += d))
  child.stderr.on("data", (d) => (stderr += d))
  const result = new Promise<CliResult>((resolve) =>
    child.on("close", (code) => resolve({ code: code ?? -1, stdout, stderr }))
  )
  return { child, result, output: () => ({ stdout, stderr }) }
}

/** Parses the one-line JSON error a failing command writes on stderr. */
export const errorOf = (result: CliResult) => {
  const line = result.stderr.trim().split("\n").at(-1) ?? ""
  return JSON.parse(line) as {
    ok: false
    error: { kind: string; message: string; remediation: string; retryable: boolean }
  }
}

/** Stops the runtime of a state directory, if one runs (tests clean up after themselves). */
export const stopRuntime = (stateDir: string): void => {
  try {
    const [pid] = readFileSync(join(stateDir, "run", "runtime.pid"), "utf8").trim().split(/\s+/)
    process.kill(Number(pid), "SIGTERM")
  } catch {
    // None runs.
  }
}

/**
 * A cluster runner (`microagent --cluster URL serve runner`) as a child process, for the cluster's
 * tests and bench: its own state directory, an address on loopback, and its stderr kept.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { binPath } from "./cli.ts"

export interface RunnerProcess {
  readonly id: string
  readonly stateDir: string
  readonly port: number
  /** More `serve runner` flags (`--capacity …`, `--labels …`). */
  readonly flags: ReadonlyArray<string>
  process?: ChildProcess
  log: string
}

/** Starts the runner and waits until it joined the cluster (throws with its stderr otherwise). */
export const startRunner = async (
  r: RunnerProcess,
  options: { readonly url: string; readonly lockExpirySeconds: number; readonly env?: Record<string, string> }
) => {
  r.log = ""
  const child = spawn(process.execPath, [
    binPath,
    "--cluster",
    options.url,
    "serve",
    "runner",
    "--advertise",
    `127.0.0.1:${r.port}`,
    "--runner-id",
    r.id,
    "--lock-expiry",
    String(options.lockExpirySeconds),
    ...r.flags
  ], {
    env: { ...process.env, MICROAGENT_HOME: r.stateDir, MICROAGENT_BACKEND: "qemu", ...options.env },
    stdio: ["ignore", "ignore", "pipe"]
  })
  r.process = child
  child.stderr!.on("data", (data) => (r.log += data))
  for (let i = 0; i < 1200 && !r.log.includes("joined the cluster"); i++) {
    if (child.exitCode !== null) throw new Error(`runner ${r.id} exited: ${r.log}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  if (!r.log.includes("joined the cluster")) throw new Error(`runner ${r.id} did not join: ${r.log}`)
}

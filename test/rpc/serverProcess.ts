/**
 * `microagent serve rpc` as a separate process, the way a host application finds it: started with a
 * fresh state directory, ready once it says it listens, stopped (and its fake VMMs with it) at the end.
 */
import { Effect } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { runtimeEnv, stopRuntime, type TestTarget } from "../mcp/mcpClient.ts"
import { killFakeVmms } from "../support/fakeEnvironment.ts"

export const binPath = NodePath.resolve(import.meta.dirname, "../../bin/microagent.mjs")

export interface ServerProcess {
  readonly stateDir: string
  readonly socket: string
  readonly child: ChildProcess
  readonly stderr: () => string
}

/** A fresh state directory, set up for the target. */
export const makeStateDir = async (target: TestTarget) => {
  const stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-rpc-"))
  await target.prepare?.(stateDir)
  return stateDir
}

export const startServer = (
  target: TestTarget,
  stateDir: string,
  socket = NodePath.join(stateDir, "sockets", "api.sock")
): Promise<ServerProcess> =>
  new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [binPath, "serve", "rpc", "--socket", socket, "--backend", target.backend],
      {
        env: { ...process.env, ...runtimeEnv, ...target.env, MICROAGENT_HOME: stateDir, NO_COLOR: "1" },
        stdio: ["ignore", "pipe", "pipe"]
      }
    )
    let stderr = ""
    const timer = setTimeout(() => reject(new Error(`serve rpc did not start: ${stderr}`)), 20_000)
    child.stderr.on("data", (data) => {
      stderr += data
      if (stderr.includes("listening on")) {
        clearTimeout(timer)
        resolve({ stateDir, socket, child, stderr: () => stderr })
      }
    })
    child.on("exit", (code) => {
      clearTimeout(timer)
      reject(new Error(`serve rpc exited with ${code}: ${stderr}`))
    })
  })

/** Stops the server; its state directory is removed unless `keepState`. */
export const stopServer = async (server: ServerProcess, keepState = false): Promise<number | null> => {
  const exited = new Promise<number | null>((resolve) => {
    if (server.child.exitCode !== null) resolve(server.child.exitCode)
    else server.child.on("exit", (code) => resolve(code))
  })
  server.child.kill("SIGTERM")
  const code = await exited
  if (!keepState) {
    await stopRuntime(server.stateDir)
    await Effect.runPromise(killFakeVmms(server.stateDir))
    NodeFs.rmSync(server.stateDir, { recursive: true, force: true })
  }
  return code
}

/**
 * Starts a host helper written in TypeScript (a bundled `.mjs` run by this Node) as a detached process
 * that outlives its starter, like the VMM it serves: `input` goes to its stdin, which is then closed
 * (secret values travel this way, never in argv or env), its stderr to `log`, and it counts as started
 * once it prints "ready". Fails with the reason when it exits, cannot run, or stays silent too long.
 */
import { Effect } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"

export const startDetached = (options: {
  readonly script: string
  readonly args: ReadonlyArray<string>
  readonly input: string
  readonly log: string
  readonly readyTimeoutMs: number
}) =>
  Effect.async<number, string>((resume) => {
    let settled = false
    const fd = NodeFs.openSync(options.log, "a", 0o600)
    const child = NodeChild.spawn(process.execPath, [options.script, ...options.args], {
      detached: true,
      stdio: ["pipe", "pipe", fd]
    })
    NodeFs.closeSync(fd)
    const fail = (why: string) => {
      if (settled) return
      settled = true
      child.kill("SIGKILL")
      resume(Effect.fail(why))
    }
    const timer = setTimeout(
      () => fail(`it did not answer within ${Math.round(options.readyTimeoutMs / 1000)} s`),
      options.readyTimeoutMs
    )
    child.on("error", (error) => fail(error.message))
    child.on("exit", (code) => fail(`it exited with code ${code}`))
    child.stdout!.on("data", (chunk: Buffer) => {
      if (settled || !chunk.toString("utf8").includes("ready")) return
      settled = true
      clearTimeout(timer)
      child.removeAllListeners("exit")
      child.stdout!.destroy()
      child.unref()
      resume(Effect.succeed(child.pid!))
    })
    child.stdin!.on("error", () => {})
    child.stdin!.end(options.input)
    return Effect.sync(() => {
      clearTimeout(timer)
      if (!settled) child.kill("SIGKILL")
    })
  })

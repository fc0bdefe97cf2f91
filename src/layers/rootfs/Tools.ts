/**
 * Host tools the rootfs pipeline runs (e2fsprogs, zstd, coreutils), found on PATH or in the sbin
 * directories an unprivileged PATH often lacks, and run as interruptible child processes.
 */
import { Data, Effect } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"

export class ToolMissing
  extends Data.TaggedError("ToolMissing")<{ readonly tool: string; readonly pkg: string }>
{
  override get message(): string {
    return `${this.tool} is not installed (Debian package: ${this.pkg})`
  }
  get remediation(): string {
    return `install it: apt-get install ${this.pkg}`
  }
}

export class ToolFailed extends Data.TaggedError("ToolFailed")<{
  readonly tool: string
  readonly code: number | null
  readonly stderr: string
}> {
  override get message(): string {
    const detail = this.stderr.trim().split("\n").slice(-6).join("; ")
    return `${this.tool} failed (exit ${this.code ?? "signal"})${detail ? `: ${detail}` : ""}`
  }
}

/** The Debian package each tool comes from, named in "missing" errors. */
export const toolPackages: Record<string, string> = {
  "mke2fs": "e2fsprogs",
  "debugfs": "e2fsprogs",
  "e2fsck": "e2fsprogs",
  "resize2fs": "e2fsprogs",
  "dumpe2fs": "e2fsprogs",
  "zstd": "zstd",
  "cp": "coreutils"
}

const searchDirs = (): Array<string> => [
  ...(process.env.PATH ?? "").split(":").filter(Boolean),
  "/usr/local/sbin",
  "/usr/sbin",
  "/sbin",
  "/usr/bin",
  "/bin",
  // Homebrew kegs keep e2fsprogs out of PATH.
  "/opt/homebrew/opt/e2fsprogs/sbin",
  "/usr/local/opt/e2fsprogs/sbin"
]

const found = new Map<string, string>()

/** Locates a tool; fails with the Debian package to install when it is absent. */
export const findTool = (tool: string): Effect.Effect<string, ToolMissing> =>
  Effect.suspend(() => {
    const cached = found.get(tool)
    if (cached !== undefined) return Effect.succeed(cached)
    for (const dir of searchDirs()) {
      const candidate = NodePath.join(dir, tool)
      try {
        NodeFs.accessSync(candidate, NodeFs.constants.X_OK)
        found.set(tool, candidate)
        return Effect.succeed(candidate)
      } catch {
        // Not in this directory.
      }
    }
    return Effect.fail(new ToolMissing({ tool, pkg: toolPackages[tool] ?? tool }))
  })

export interface ToolResult {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** Runs a tool to completion; interruption kills it. Non-zero exit is returned, not failed. */
export const runTool = (
  tool: string,
  args: ReadonlyArray<string>,
  options: { readonly env?: NodeJS.ProcessEnv; readonly input?: string } = {}
): Effect.Effect<ToolResult, ToolMissing | ToolFailed> =>
  Effect.flatMap(findTool(tool), (path) =>
    Effect.async<ToolResult, ToolFailed>((resume) => {
      const child = NodeChild.spawn(path, args, {
        stdio: [options.input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
        env: { ...process.env, LC_ALL: "C", ...options.env }
      })
      const out: Array<Buffer> = []
      const err: Array<Buffer> = []
      child.stdout!.on("data", (b: Buffer) => out.push(b))
      child.stderr!.on("data", (b: Buffer) => err.push(b))
      child.on("error", (cause) =>
        resume(Effect.fail(new ToolFailed({ tool, code: null, stderr: String(cause) }))))
      child.on("close", (code) =>
        resume(Effect.succeed({
          code,
          stdout: Buffer.concat(out).toString("utf8"),
          stderr: Buffer.concat(err).toString("utf8")
        })))
      if (options.input !== undefined) {
        child.stdin!.end(options.input)
      }
      return Effect.sync(() => {
        child.kill("SIGKILL")
      })
    }))

/** Runs a tool and fails unless it exits 0. */
export const runToolOk = (
  tool: string,
  args: ReadonlyArray<string>,
  options: { readonly env?: NodeJS.ProcessEnv; readonly input?: string } = {}
): Effect.Effect<ToolResult, ToolMissing | ToolFailed> =>
  Effect.flatMap(
    runTool(tool, args, options),
    (result) =>
      result.code === 0
        ? Effect.succeed(result)
        : Effect.fail(new ToolFailed({ tool, code: result.code, stderr: result.stderr || result.stdout }))
  )

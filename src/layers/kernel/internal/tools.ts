/**
 * Host tools run as subprocesses (apt-get, dpkg-deb, xz, zstd, …), and the few file helpers the
 * cache needs: atomic 0600 writes and streaming sha256.
 */
import { Data, Effect } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"

/** A tool is not installed; names the Debian package that ships it. */
export class ToolMissing extends Data.TaggedError("ToolMissing")<{
  readonly command: string
  readonly debianPackage: string
}> {
  override get message() {
    return `${this.command} is not installed (Debian package: ${this.debianPackage})`
  }
}

/** Anything else that went wrong in the cache: bad input files, failed tools, I/O. */
export class KernelCacheFailure extends Data.TaggedError("KernelCacheFailure")<{
  readonly reason: "BadInput" | "ToolFailed" | "Io" | "Checksum" | "NotFound" | "Unsupported"
  readonly message: string
  readonly remediation?: string
}> {}

export interface ToolResult {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

/**
 * Runs a tool to completion. Non-zero exit codes are returned, not failed, because some tools
 * (lz4 on a kernel payload) exit 1 with complete output. Interruption kills the process.
 */
export const runTool = (options: {
  readonly command: string
  readonly args: ReadonlyArray<string>
  readonly debianPackage: string
  readonly cwd?: string
  readonly stdinFile?: string
  readonly stdoutFile?: string
  readonly env?: Record<string, string>
}): Effect.Effect<ToolResult, ToolMissing | KernelCacheFailure> =>
  Effect.async<ToolResult, ToolMissing | KernelCacheFailure>((resume) => {
    const stdin = options.stdinFile === undefined ? "ignore" : NodeFs.openSync(options.stdinFile, "r")
    const stdout = options.stdoutFile === undefined ? "pipe" : NodeFs.openSync(options.stdoutFile, "w", 0o600)
    const closeFds = () => {
      if (typeof stdin === "number") NodeFs.closeSync(stdin)
      if (typeof stdout === "number") NodeFs.closeSync(stdout)
    }
    const child = NodeChild.spawn(options.command, [...options.args], {
      cwd: options.cwd,
      stdio: [stdin, stdout, "pipe"],
      env: { ...process.env, LC_ALL: "C", ...options.env }
    })
    const out: Array<Buffer> = []
    const err: Array<Buffer> = []
    child.stdout?.on("data", (chunk: Buffer) => out.push(chunk))
    child.stderr?.on("data", (chunk: Buffer) => err.push(chunk))
    let settled = false
    child.on("error", (error: NodeJS.ErrnoException) => {
      if (settled) return
      settled = true
      closeFds()
      resume(
        error.code === "ENOENT"
          ? Effect.fail(new ToolMissing({ command: options.command, debianPackage: options.debianPackage }))
          : Effect.fail(
            new KernelCacheFailure({ reason: "ToolFailed", message: `${options.command}: ${error.message}` })
          )
      )
    })
    child.on("close", (code, signal) => {
      if (settled) return
      settled = true
      closeFds()
      resume(Effect.succeed({
        code: code ?? (signal === null ? 1 : 128),
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8")
      }))
    })
    return Effect.sync(() => {
      if (!settled) child.kill("SIGKILL")
    })
  })

/** Runs a tool and fails unless it exits 0. */
export const runToolChecked = (options: Parameters<typeof runTool>[0]) =>
  runTool(options).pipe(
    Effect.filterOrFail(
      (result) => result.code === 0,
      (result) =>
        new KernelCacheFailure({
          reason: "ToolFailed",
          message: `${options.command} ${options.args.join(" ")} exited ${result.code}: ${
            result.stderr.trim().split("\n").slice(-3).join(" | ")
          }`
        })
    )
  )

export const io = <A>(what: string, f: () => A): Effect.Effect<A, KernelCacheFailure> =>
  Effect.try({
    try: f,
    catch: (cause) => new KernelCacheFailure({ reason: "Io", message: `${what}: ${String(cause)}` })
  })

export const sha256Hex = (bytes: Uint8Array): string =>
  NodeCrypto.createHash("sha256").update(bytes).digest("hex")

/** Streams a file through sha256 (kernels are tens of MB; no need to hold them). */
export const sha256File = (path: string): Effect.Effect<string, KernelCacheFailure> =>
  Effect.async<string, KernelCacheFailure>((resume) => {
    const hash = NodeCrypto.createHash("sha256")
    const stream = NodeFs.createReadStream(path)
    stream.on("data", (chunk) => hash.update(chunk))
    stream.on(
      "error",
      (error) =>
        resume(
          Effect.fail(new KernelCacheFailure({ reason: "Io", message: `reading ${path}: ${error.message}` }))
        )
    )
    stream.on("end", () => resume(Effect.succeed(hash.digest("hex"))))
    return Effect.sync(() => stream.destroy())
  })

/** Writes a file 0600 through a temporary name in the same directory, then renames it into place. */
export const writeFileAtomic = (
  path: string,
  data: Uint8Array | string
): Effect.Effect<void, KernelCacheFailure> =>
  io(`writing ${path}`, () => {
    const temp = NodePath.join(
      NodePath.dirname(path),
      `.${NodePath.basename(path)}.${process.pid}.${NodeCrypto.randomBytes(4).toString("hex")}.tmp`
    )
    try {
      const fd = NodeFs.openSync(temp, "wx", 0o600)
      try {
        NodeFs.writeFileSync(fd, data)
        NodeFs.fsyncSync(fd)
      } finally {
        NodeFs.closeSync(fd)
      }
      NodeFs.renameSync(temp, path)
    } catch (error) {
      NodeFs.rmSync(temp, { force: true })
      throw error
    }
  })

/** Creates a directory tree with mode 0700 (umask-proof). */
export const ensurePrivateDir = (path: string): Effect.Effect<string, KernelCacheFailure> =>
  io(`creating ${path}`, () => {
    NodeFs.mkdirSync(path, { recursive: true, mode: 0o700 })
    NodeFs.chmodSync(path, 0o700)
    return path
  })

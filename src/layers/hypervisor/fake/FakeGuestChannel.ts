/**
 * The fake backend's guest channel: runs commands as host processes inside the workspace's scratch
 * directory (guest `/` is that directory for `cwd` and files; a command's own absolute paths are the
 * host's). Secrets are files under the root's `run/secrets` (0700, each 0400), which a command reads
 * relative to its working directory (`cat run/secrets/NAME` from `/`), or through
 * `$MICROAGENT_SECRETS_DIR`; they are removed when the fake VM stops. For the fast test tier only.
 */
import { Chunk, Effect, Layer, Stream } from "effect"
import { spawn } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { type ExecOutput, type ExecRequest, ExecResult } from "../../../domain/Exec.ts"
import { resolveInRoot } from "../../../domain/RootedPath.ts"
import {
  GuestChannel,
  type GuestConnection,
  type GuestError,
  GuestRemoteError,
  GuestUnreachable
} from "../../../services/GuestChannel.ts"
import { hostPathIn } from "./FakeDisks.ts"
import { rememberGroup } from "./FakeGuestProcesses.ts"

const defaultLimit = 16 * 1024 * 1024

/** Resolves a guest path inside the scratch root (or a disk mounted in it); `..` and symlinks cannot climb out. */
const hostPath = (root: string, guestPath: string) => hostPathIn(root, guestPath)

/** A command's working directory; one that cannot be resolved (a symlink loop) is left for spawn to refuse. */
const workingDirectory = (root: string, guestPath: string) => {
  try {
    return hostPath(root, guestPath)
  } catch {
    return NodePath.join(root, NodePath.resolve("/", guestPath))
  }
}

/** Where the secrets of the fake guest rooted at `root` were delivered (the host directory). */
const secretsRecordOf = (root: string) => `${root}.fake-secrets`

/** The host directory of the guest's /run/secrets, resolved inside the root (symlinks cannot lead out). */
const secretsDirOf = (root: string) => resolveInRoot(root, "/run/secrets")

/** Removes the fake guest's secrets, wherever they were delivered (its "tmpfs" goes with the VM). Never throws. */
export const removeSecrets = (root: string) => {
  const dirs = new Set<string>()
  try {
    dirs.add(NodeFs.readFileSync(secretsRecordOf(root), "utf8").trim())
  } catch {
    // None delivered.
  }
  try {
    dirs.add(secretsDirOf(root))
  } catch {
    // A symlink loop: nothing of ours can be there.
  }
  for (const dir of dirs) {
    if (dir.length === 0 || !dir.startsWith(`${root}/`)) continue
    try {
      if (NodeFs.lstatSync(dir, { throwIfNoEntry: false })?.isDirectory()) {
        for (const entry of NodeFs.readdirSync(dir)) {
          const file = NodePath.join(dir, entry)
          // Overwritten before it goes, like the agent's purge.
          if (NodeFs.lstatSync(file).isFile()) {
            NodeFs.writeFileSync(file, Buffer.alloc(NodeFs.statSync(file).size))
          }
        }
        NodeFs.rmSync(dir, { recursive: true, force: true })
      }
    } catch {
      // Gone already.
    }
  }
  NodeFs.rmSync(secretsRecordOf(root), { force: true })
}

const signalNumbers: Record<string, number> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGKILL: 9,
  SIGTERM: 15,
  SIGQUIT: 3,
  SIGABRT: 6,
  SIGSEGV: 11,
  SIGPIPE: 13
}

const execStream = (
  root: string,
  request: ExecRequest,
  stdin?: Stream.Stream<Uint8Array, GuestError>
): Stream.Stream<ExecOutput, GuestError> =>
  Stream.asyncPush<ExecOutput, GuestError>((emit) =>
    Effect.acquireRelease(
      Effect.sync(() => {
        const started = Date.now()
        const limits = {
          stdout: request.stdoutLimit ?? defaultLimit,
          stderr: request.stderrLimit ?? defaultLimit
        }
        const seen = { stdout: 0, stderr: 0 }
        const collected: Record<"stdout" | "stderr", Array<Buffer>> = { stdout: [], stderr: [] }
        let timedOut = false
        let finished = false
        const child = spawn(request.argv[0], request.argv.slice(1), {
          cwd: workingDirectory(root, request.cwd ?? "/"),
          env: {
            PATH: process.env.PATH ?? "/usr/bin:/bin",
            HOME: root,
            MICROAGENT_SECRETS_DIR: NodePath.join(root, "run", "secrets"),
            ...request.env
          },
          detached: true,
          stdio: ["pipe", "pipe", "pipe"]
        })
        if (child.pid !== undefined) rememberGroup(root, child.pid)
        const take = (which: "stdout" | "stderr") => (data: Buffer) => {
          const room = Math.max(0, limits[which] - seen[which])
          seen[which] += data.length
          if (room === 0) return
          const piece = data.subarray(0, room)
          collected[which].push(piece)
          emit.single({ _tag: which === "stdout" ? "Stdout" : "Stderr", data: new Uint8Array(piece) })
        }
        child.stdout.on("data", take("stdout"))
        child.stderr.on("data", take("stderr"))
        child.stdin.on("error", () => {})
        const timer = request.timeoutSeconds === undefined ? undefined : setTimeout(() => {
          timedOut = true
          try {
            process.kill(-child.pid!, "SIGTERM")
            setTimeout(() => {
              try {
                process.kill(-child.pid!, "SIGKILL")
              } catch {
                // Gone already.
              }
            }, 2000).unref()
          } catch {
            // Gone already.
          }
        }, request.timeoutSeconds * 1000)
        const finish = (
          status: ExecResult["status"],
          exitCode: number,
          extra: { signal?: number; error?: string }
        ) => {
          if (finished) return
          finished = true
          if (timer) clearTimeout(timer)
          emit.single({
            _tag: "Exit",
            result: new ExecResult({
              status,
              exitCode,
              ...extra,
              stdout: Buffer.concat(collected.stdout).toString("utf8"),
              stderr: Buffer.concat(collected.stderr).toString("utf8"),
              stdoutTruncated: seen.stdout > limits.stdout,
              stderrTruncated: seen.stderr > limits.stderr,
              durationMs: Date.now() - started
            })
          })
          emit.end()
        }
        child.on("error", (error) => finish("failed_to_start", 127, { error: error.message }))
        child.on("close", (code, signal) => {
          if (timedOut) return finish("timed_out", 124, {})
          if (signal !== null) {
            const number = signalNumbers[signal] ?? 0
            return finish("signaled", 128 + number, { signal: number })
          }
          finish("exited", code ?? 0, {})
        })
        return child
      }).pipe(
        Effect.tap((child) =>
          stdin === undefined
            ? Effect.sync(() => child.stdin.end())
            : stdin.pipe(
              Stream.runForEach((chunk) => Effect.sync(() => child.stdin.write(chunk))),
              Effect.ensuring(Effect.sync(() => child.stdin.end())),
              Effect.forkScoped
            )
        )
      ),
      (child) =>
        Effect.sync(() => {
          // Interrupting the stream ends the command, like a signal to the guest process group.
          if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
            try {
              process.kill(-child.pid, "SIGKILL")
            } catch {
              // Gone already.
            }
          }
        })
    ), { bufferSize: "unbounded" })

/** What the agent would answer: a missing path is `not_found`. */
const remoteError = (cause: unknown) =>
  new GuestRemoteError({
    message: String(cause),
    ...((cause as NodeJS.ErrnoException).code === "ENOENT" ? { code: "not_found" } : {})
  })

const connection = (root: string): GuestConnection => ({
  exec: (request, stdin) =>
    execStream(root, request, stdin).pipe(
      Stream.runCollect,
      Effect.flatMap((outputs) => {
        const last = Chunk.last(outputs)
        return last._tag === "Some" && last.value._tag === "Exit"
          ? Effect.succeed(last.value.result)
          : Effect.fail(new GuestUnreachable({ message: "the command ended without a result" }))
      })
    ),
  execStream: (request, stdin) => execStream(root, request, stdin),
  putFile: (file) =>
    Effect.gen(function*() {
      const chunks = yield* Stream.runCollect(file.data)
      yield* Effect.try({
        try: () => {
          const target = hostPath(root, file.path)
          NodeFs.writeFileSync(target, Buffer.concat(Chunk.toArray(chunks)), { mode: file.mode })
          NodeFs.chmodSync(target, file.mode)
        },
        catch: remoteError
      })
    }),
  getFile: (path) =>
    Effect.try({
      try: () => {
        const target = hostPath(root, path)
        const data = NodeFs.readFileSync(target)
        return {
          mode: NodeFs.statSync(target).mode & 0o7777,
          size: data.length,
          data: Stream.make(new Uint8Array(data))
        }
      },
      catch: remoteError
    }),
  deliverSecrets: (secrets, options) =>
    Effect.try({
      try: () => {
        if (options?.purge === true) removeSecrets(root)
        // Resolved inside the root: a guest's symlink at run or run/secrets cannot send them elsewhere.
        const dir = secretsDirOf(root)
        NodeFs.mkdirSync(dir, { recursive: true, mode: 0o700 })
        const stat = NodeFs.lstatSync(dir)
        if (!stat.isDirectory()) throw new Error(`${dir} is not a directory`)
        NodeFs.chmodSync(dir, 0o700)
        NodeFs.writeFileSync(secretsRecordOf(root), `${dir}\n`, { mode: 0o600 })
        for (const secret of secrets) {
          const file = NodePath.join(dir, secret.name)
          NodeFs.rmSync(file, { force: true })
          // O_EXCL: a name the guest made a symlink meanwhile is not followed.
          NodeFs.writeFileSync(file, secret.value, { mode: 0o400, flag: "wx" })
        }
      },
      catch: remoteError
    }),
  ping: Effect.void,
  shutdown: Effect.void
})

export const layer = Layer.succeed(GuestChannel, {
  connect: (endpoint) =>
    endpoint._tag === "HostDirectory" && NodeFs.existsSync(endpoint.root)
      ? Effect.succeed(connection(endpoint.root))
      : Effect.fail(
        new GuestUnreachable({ message: `the fake guest channel cannot reach ${JSON.stringify(endpoint)}` })
      )
})

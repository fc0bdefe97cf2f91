/**
 * `cp`: files and directory trees between the host and a workspace, either way. A running workspace is
 * reached over its guest channel (files with the agent's put/get, trees as tar streams through the
 * image's own `tar`); a stopped or prepared one offline, on its ext4 disk with e2fsck and debugfs. A disk
 * that is a host directory (the `DirectoryDisk` capability: the fake backend) is read and written
 * directly, running or not (internal/DirectoryCopy.ts). The host side is read and written by this
 * process (the runtime), so bytes never cross the RPC socket.
 */
import { Effect, Stream } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { classifyNoSpace } from "../domain/DiskFull.ts"
import { Conflict, InvalidInput, NotFound, Permanent, Transient, Unsupported } from "../domain/Errors.ts"
import { ExecRequest } from "../domain/Exec.ts"
import type { CopyResult } from "../domain/Files.ts"
import type { Workspace } from "../domain/Workspace.ts"
import { DiskFiles, type DiskFilesFailed } from "../services/DiskFiles.ts"
import { faultPoint } from "../services/Faults.ts"
import {
  GuestChannel,
  type GuestConnection,
  type GuestError,
  GuestRemoteError
} from "../services/GuestChannel.ts"
import { Home } from "../services/Home.ts"
import { HostTrees } from "../services/HostTrees.ts"
import { Hypervisor } from "../services/Hypervisor.ts"
import { StateStore } from "../services/StateStore.ts"
import { runningHandle } from "./Exec.ts"
import { checkGuestPath, guestBasename } from "./internal/CopyPaths.ts"
import { copyInDirectory, copyOutDirectory } from "./internal/DirectoryCopy.ts"
import { claimStoppedDisk, offlineStates } from "./internal/DiskClaim.ts"
import { extractHostTree, hostDestination, writeHostFile } from "./internal/HostWrite.ts"
import { reconcile, requireBackend } from "./internal/Reconcile.ts"

const orFail = <A>(value: A | InvalidInput) =>
  value instanceof InvalidInput ? Effect.fail(value) : Effect.succeed(value)

const guestError = (name: string, path: string) => (error: GuestError) =>
  error._tag === "GuestUnreachable"
    ? new Transient({
      message: `workspace ${name}: the guest agent is unreachable: ${error.message}`,
      remediation: "retry shortly",
      retryAfterMs: 1000
    })
    : error._tag === "GuestRemoteError" && error.code === "not_found"
    ? new NotFound({ message: `workspace ${name}: ${error.message}`, remediation: `check the path ${path}` })
    : new Permanent({ message: `workspace ${name}: ${error.message}`, remediation: `check the path ${path}` })

const isGuestError = (error: { readonly _tag: string }): error is GuestError =>
  error._tag === "GuestUnreachable" || error._tag === "GuestProtocolError"
  || error._tag === "GuestRemoteError"

/** The classified form of what the channel reported; the program's own errors pass through. */
const overChannel = (name: string, path: string) => <E extends { readonly _tag: string }>(error: E) =>
  isGuestError(error) ? guestError(name, path)(error) : (error as Exclude<E, GuestError>)

const imageError = (name: string) => (error: DiskFilesFailed) =>
  error.remediation !== undefined
    ? new Permanent({ message: error.message, remediation: error.remediation })
    : new Permanent({
      message: `workspace ${name}: offline copy failed: ${error.message}`,
      remediation: "check the path; `microagent start` and copy over the channel if the disk is unusual"
    })

/** Where the workspace can be reached: over its channel, or offline on its disk. */
const reach = Effect.fn("cp.reach")(function*(name: string) {
  const store = yield* StateStore
  const hypervisor = yield* Hypervisor
  const workspace = yield* store.get(name).pipe(Effect.flatMap(reconcile))
  yield* requireBackend(workspace)
  const needs = (capability: "LiveFileCopy" | "OfflineFileCopy") =>
    hypervisor.capabilities.has(capability) ? Effect.void : Effect.fail(
      new Unsupported({
        message: `the ${workspace.backend} backend cannot copy files ${
          capability === "LiveFileCopy" ? "into a running workspace" : "to a stopped workspace's disk"
        }`,
        remediation: "use a workspace on the qemu backend",
        backend: workspace.backend,
        feature: capability
      })
    )
  // A disk that is a host directory (the fake backend) is read and written directly, running or not.
  const directory = hypervisor.capabilities.has("DirectoryDisk")
  if (workspace.state === "running") {
    yield* needs("LiveFileCopy")
    return { _tag: "Live" as const, workspace, directory }
  }
  if (offlineStates.includes(workspace.state)) {
    yield* needs("OfflineFileCopy")
    return { _tag: "Offline" as const, workspace, directory }
  }
  return yield* new Conflict({
    message: `workspace ${name} is ${workspace.state}; files move only while it runs or while it is stopped`,
    remediation: workspace.state === "paused"
      ? `it is paused: \`microagent resume ${name}\` lets it run on`
      : "wait for it to settle, then retry"
  })
})

/**
 * A copy on a disk that is a host directory (the fake backend's), running or not: a stopped one is
 * claimed as an offline cp claims an image, and only its root disk is reached.
 */
const onDirectoryDisk = <A, E, R>(
  name: string,
  reached: Effect.Effect.Success<ReturnType<typeof reach>>,
  guestPath: string,
  copy: (live: boolean) => Effect.Effect<A, E, R>
) =>
  Effect.scoped(Effect.gen(function*() {
    const live = reached._tag === "Live"
    if (!live) {
      yield* onRootDisk(reached.workspace, guestPath)
      yield* claimStoppedDisk(name, "an offline cp")
    }
    return yield* copy(live)
  }))

/**
 * Offline, only the root disk is read and written: a path under an attached disk's mountpoint would
 * silently reach the directory beneath it.
 */
export const onRootDisk = (workspace: Workspace, guestPath: string) => {
  const mount = workspace.mounts.find((m) =>
    guestPath === m.target || guestPath.startsWith(`${m.target.replace(/\/$/, "")}/`)
  )
  return mount === undefined ? Effect.void : Effect.fail(
    new Unsupported({
      message:
        `workspace ${workspace.name}: ${guestPath} is on the disk attached at ${mount.target}, which offline copies do not reach`,
      remediation: `start the workspace and copy over the channel: microagent start ${workspace.name}`,
      feature: "OfflineFileCopy"
    })
  )
}

/** Runs a helper command in the guest as root; fails with its stderr unless it exits 0. */
const guestCommand = (
  connection: GuestConnection,
  argv: [string, ...Array<string>],
  stdin?: Stream.Stream<Uint8Array, GuestError>
) =>
  Effect.flatMap(
    connection.exec(new ExecRequest({ argv, user: "0:0", cwd: "/" }), stdin),
    (result) =>
      result.exitCode === 0
        ? Effect.succeed(result)
        : Effect.fail(
          new GuestRemoteError({
            message: `${argv.slice(0, 2).join(" ")} exited ${result.exitCode}: ${
              result.stderr.trim() || result.error || ""
            }`,
            ...(/No such file|not found|does not exist/i.test(result.stderr) ? { code: "not_found" } : {})
          })
        )
  )

const isGuestDirectory = (connection: GuestConnection, path: string) =>
  Effect.map(
    connection.exec(new ExecRequest({ argv: ["test", "-d", path], user: "0:0", cwd: "/" })),
    (r) => r.exitCode === 0
  )

const connectTo = (name: string) =>
  Effect.gen(function*() {
    const handle = yield* runningHandle(name)
    const channel = yield* GuestChannel
    return yield* channel.connect(handle.channel).pipe(Effect.mapError(guestError(name, "/")))
  })

const hostSource = (hostPath: string) =>
  Effect.try({
    try: () => {
      if (!NodePath.isAbsolute(hostPath)) throw new Error("not absolute")
      return NodeFs.statSync(hostPath)
    },
    catch: () =>
      NodePath.isAbsolute(hostPath)
        ? new NotFound({ message: `host path ${hostPath} does not exist`, remediation: "check the path" })
        : new InvalidInput({
          message: `host path ${hostPath} is not absolute`,
          remediation: "pass an absolute path"
        })
  })

/** A host file's bytes as a guest-channel upload. */
const fileBytes = (path: string): Stream.Stream<Uint8Array, GuestError> =>
  Stream.fromAsyncIterable(
    NodeFs.createReadStream(path, { highWaterMark: 1024 * 1024 }),
    (cause) => new GuestRemoteError({ message: `reading ${path}: ${String(cause)}` })
  )

const privateWorkDir = Effect.flatMap(Home, (home) =>
  Effect.acquireRelease(
    Effect.sync(() => NodeFs.mkdtempSync(NodePath.join(home.tmp, "cp-"))),
    (dir) => Effect.sync(() => NodeFs.rmSync(dir, { recursive: true, force: true }))
  ))

/** Host → workspace. A directory at `guestPath` receives the source under its own basename. */
export const copyIn = Effect.fn("cp.in")(function*(name: string, hostPath: string, rawGuestPath: string) {
  const trees = yield* HostTrees
  const disk = yield* DiskFiles
  const guestPath = yield* orFail(checkGuestPath(rawGuestPath))
  const source = yield* hostSource(hostPath)
  const kind = source.isDirectory() ? "directory" as const : "file" as const
  if (!source.isDirectory() && !source.isFile()) {
    return yield* new InvalidInput({
      message: `${hostPath} is neither a file nor a directory`,
      remediation: "copy regular files and directories"
    })
  }
  const reached = yield* reach(name)
  yield* faultPoint("cp.reached")
  const tree = kind === "directory"
    ? yield* Effect.try({
      try: () => trees.walk(hostPath, "top"),
      catch: (cause) =>
        new Permanent({
          message: `cannot read ${hostPath}: ${String(cause)}`,
          remediation: "check its permissions"
        })
    })
    : undefined
  const entries = tree?.entries.length ?? 1
  const bytes = tree?.entries.reduce((n, e) => n + e.size, 0) ?? source.size
  const result = (target: string, via: CopyResult["via"]): CopyResult => ({
    workspace: name,
    direction: "in",
    hostPath,
    guestPath: target,
    kind,
    via,
    entries,
    bytes
  })

  if (reached.directory) {
    return yield* onDirectoryDisk(name, reached, guestPath, (live) =>
      Effect.map(
        copyInDirectory(reached.workspace, live, hostPath, guestPath),
        (target) => result(target, live ? "channel" : "offline")
      ))
  }

  if (reached._tag === "Live") {
    return yield* Effect.scoped(Effect.gen(function*() {
      const connection = yield* connectTo(name)
      const intoDirectory = yield* isGuestDirectory(connection, guestPath)
      const target = intoDirectory ? NodePath.posix.join(guestPath, NodePath.basename(hostPath)) : guestPath
      const parent = NodePath.posix.dirname(target)
      if (!(yield* isGuestDirectory(connection, parent))) {
        return yield* new GuestRemoteError({ code: "not_found", message: `${parent}: no such directory` })
      }
      if (kind === "file") {
        yield* connection.putFile({ path: target, mode: source.mode & 0o7777, data: fileBytes(hostPath) })
      } else {
        const named = trees.walk(hostPath, NodePath.posix.basename(target))
        const archive = Stream.fromAsyncIterable(
          trees.tar(named),
          (cause) => new GuestRemoteError({ message: `reading ${hostPath}: ${String(cause)}` })
        )
        yield* guestCommand(connection, ["tar", "-x", "-f", "-", "-C", parent], archive)
      }
      return result(target, "channel")
    })).pipe(Effect.mapError(overChannel(name, guestPath)))
  }

  return yield* Effect.scoped(Effect.gen(function*() {
    yield* onRootDisk(reached.workspace, guestPath)
    yield* claimStoppedDisk(name, "an offline cp")
    const image = reached.workspace.rootfsPath
    yield* disk.repair(image)
    const at = yield* disk.stat(image, guestPath)
    const target = at?.type === "directory"
      ? NodePath.posix.join(guestPath, NodePath.basename(hostPath))
      : guestPath
    yield* onRootDisk(reached.workspace, target)
    const parent = yield* disk.stat(image, NodePath.posix.dirname(target))
    if (parent?.type !== "directory") {
      return yield* new NotFound({
        message: `workspace ${name}: ${NodePath.posix.dirname(target)}: no such directory`,
        remediation: "create it first, or name an existing directory"
      })
    }
    const existing = target === guestPath ? at : yield* disk.stat(image, target)
    if (existing?.type === "directory") {
      return yield* new Conflict({
        message: `workspace ${name}: ${target} already exists and is a directory`,
        remediation: "copy into a new path, or start the workspace to merge into it over the channel"
      })
    }
    const named = kind === "directory"
      ? tree!
      : {
        entries: [{
          name: "top",
          type: "file" as const,
          source: hostPath,
          mode: source.mode & 0o7777,
          size: source.size,
          mtime: Math.floor(source.mtimeMs / 1000),
          linkname: ""
        }],
        skipped: []
      }
    const workDir = yield* privateWorkDir
    yield* disk.writeTree(image, named, target, { replace: existing !== undefined, workDir })
    return result(target, "offline")
  })).pipe(
    Effect.catchTag("DiskFilesFailed", imageError(name)),
    Effect.mapError(
      classifyNoSpace(`copying ${hostPath} into workspace ${name}`, reached.workspace.rootfsPath)
    )
  )
})

/** Workspace → host. A directory at `hostPath` receives the source under its guest basename. */
export const copyOut = Effect.fn("cp.out")(function*(name: string, rawGuestPath: string, hostPath: string) {
  const trees = yield* HostTrees
  const disk = yield* DiskFiles
  const guestPath = yield* orFail(checkGuestPath(rawGuestPath))
  const base = yield* orFail(guestBasename(guestPath))
  if (!NodePath.isAbsolute(hostPath)) {
    return yield* new InvalidInput({
      message: `host path ${hostPath} is not absolute`,
      remediation: "pass an absolute path"
    })
  }
  const reached = yield* reach(name)
  yield* faultPoint("cp.reached")
  const done = (
    target: string,
    kind: CopyResult["kind"],
    via: CopyResult["via"],
    entries: number,
    bytes: number
  ): CopyResult => ({
    workspace: name,
    direction: "out",
    hostPath: target,
    guestPath,
    kind,
    via,
    entries,
    bytes
  })

  if (reached.directory) {
    return yield* onDirectoryDisk(name, reached, guestPath, (live) =>
      Effect.map(
        copyOutDirectory(reached.workspace, live, guestPath, hostPath, base),
        (copied) =>
          done(copied.target, copied.kind, live ? "channel" : "offline", copied.entries, copied.bytes)
      ))
  }

  if (reached._tag === "Live") {
    return yield* Effect.scoped(Effect.gen(function*() {
      const connection = yield* connectTo(name)
      // Where a file would land is settled before the download opens, so a bad target leaves no
      // half-read stream behind in the agent.
      const fileTarget = yield* hostDestination(hostPath, base, false)
      const file = yield* connection.getFile(guestPath).pipe(
        Effect.map((f) => ({ _tag: "File" as const, file: f })),
        Effect.catchIf(
          (e) => e._tag === "GuestRemoteError" && /Is a directory/i.test(e.message),
          () => Effect.succeed({ _tag: "Directory" as const })
        )
      )
      if (file._tag === "File") {
        let pulled = false
        const bytes = yield* writeHostFile(fileTarget, (write) => {
          pulled = true
          return Stream.runForEach(file.file.data, (chunk) => Effect.sync(() => write(chunk))).pipe(
            Effect.as(file.file.mode)
          )
        }).pipe(
          // If the sink never opened, the download never ran: running it to its first chunk releases it.
          Effect.onError(() => (pulled ? Effect.void : Effect.ignore(Stream.runHead(file.file.data))))
        )
        return done(fileTarget, "file", "channel", 1, bytes)
      }
      const target = yield* hostDestination(hostPath, base, true)
      const stderr: Array<Uint8Array> = []
      const written = yield* extractHostTree(target, base, (sink) =>
        connection.execStream(
          new ExecRequest({
            argv: ["tar", "-c", "-f", "-", "-C", NodePath.posix.dirname(guestPath), base],
            user: "0:0",
            cwd: "/"
          })
        ).pipe(Stream.runForEach((output) =>
          Effect.gen(function*() {
            if (output._tag === "Stdout") sink.write(output.data)
            else if (output._tag === "Stderr") stderr.push(output.data)
            else if (output.result.exitCode !== 0) {
              return yield* new GuestRemoteError({
                message: `tar -c exited ${output.result.exitCode}: ${Buffer.concat(stderr).toString().trim()}`
              })
            }
          })
        )))
      return done(target, "directory", "channel", written.entries, written.bytes)
    })).pipe(Effect.mapError(overChannel(name, guestPath)))
  }

  return yield* Effect.scoped(Effect.gen(function*() {
    yield* onRootDisk(reached.workspace, guestPath)
    yield* claimStoppedDisk(name, "an offline cp")
    const image = reached.workspace.rootfsPath
    yield* disk.repair(image)
    const at = yield* disk.stat(image, guestPath)
    if (at === undefined) {
      return yield* new NotFound({
        message: `workspace ${name}: ${guestPath} does not exist`,
        remediation: "check the path"
      })
    }
    if (at.type !== "file" && at.type !== "directory") {
      return yield* new InvalidInput({
        message: `workspace ${name}: ${guestPath} is a ${at.type}, not a file or directory`,
        remediation: at.type === "symlink"
          ? "copy the path it points to"
          : "copy regular files and directories"
      })
    }
    const workDir = yield* privateWorkDir
    if (at.type === "file") {
      const target = yield* hostDestination(hostPath, base, false)
      const dumped = NodePath.join(workDir, "file")
      yield* disk.dumpFile(image, guestPath, dumped)
      const bytes = yield* writeHostFile(target, (write) =>
        Effect.sync(() => {
          const fd = NodeFs.openSync(dumped, "r")
          const buffer = Buffer.allocUnsafe(1024 * 1024)
          for (let n = NodeFs.readSync(fd, buffer); n > 0; n = NodeFs.readSync(fd, buffer)) {
            write(buffer.subarray(0, n))
          }
          NodeFs.closeSync(fd)
          return at.mode
        }))
      return done(target, "file", "offline", 1, bytes)
    }
    // rdump writes into a private directory; the tree then reaches the target through the safe extractor.
    const target = yield* hostDestination(hostPath, base, true)
    yield* disk.dumpTree(image, guestPath, workDir)
    const written = yield* extractHostTree(target, base, (sink) =>
      Effect.promise(async () => {
        for await (const chunk of trees.tar(trees.walk(NodePath.join(workDir, base), base))) sink.write(chunk)
      }))
    return done(target, "directory", "offline", written.entries, written.bytes)
  })).pipe(Effect.catchTag("DiskFilesFailed", imageError(name)))
})

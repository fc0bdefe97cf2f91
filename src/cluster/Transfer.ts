/**
 * Files and directories by value between a cluster client and a runner: a tar whose one top-level entry
 * is `payload` (the file or directory, under that name), made and read by GNU tar. The runner stages a
 * transfer in a private directory of its state directory and removes it when the copy is done.
 */
import { Effect } from "effect"
import { execFile } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { InvalidInput, Permanent } from "../domain/Errors.ts"

const tar = (args: ReadonlyArray<string>, input?: Uint8Array) =>
  Effect.async<Buffer, Permanent>((resume) => {
    const child = execFile(
      "tar",
      args as Array<string>,
      { encoding: "buffer", maxBuffer: 1024 * 1024 * 1024 },
      (error, stdout, stderr) => {
        if (error) {
          resume(Effect.fail(
            new Permanent({
              message: `tar failed: ${stderr.toString().trim() || error.message}`,
              remediation: "check that GNU tar is installed (Debian package tar)"
            })
          ))
        } else resume(Effect.succeed(stdout))
      }
    )
    if (input !== undefined) child.stdin?.end(input)
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/** A fresh private directory under `parent`, removed with the scope. */
export const stagingDir = (parent: string) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      NodeFs.mkdirSync(parent, { recursive: true, mode: 0o700 })
      return NodeFs.mkdtempSync(NodePath.join(parent, "t-"))
    }),
    (dir) => Effect.sync(() => NodeFs.rmSync(dir, { recursive: true, force: true }))
  )

/** The tar of `path` (a file or a directory) with its top entry renamed `payload`. */
export const packPath = (path: string, maxBytes: number) =>
  Effect.gen(function*() {
    const absolute = NodePath.resolve(path)
    const stat = yield* Effect.try({
      try: () => NodeFs.statSync(absolute),
      catch: () => new InvalidInput({ message: `${path}: no such file or directory` })
    })
    if (!stat.isFile() && !stat.isDirectory()) {
      return yield* Effect.fail(
        new InvalidInput({ message: `${path}: only files and directories can be copied` })
      )
    }
    const bytes = yield* tar([
      "-c",
      "-C",
      NodePath.dirname(absolute),
      "--transform=s,^[^/]*,payload,S",
      "--",
      NodePath.basename(absolute)
    ])
    if (bytes.byteLength > maxBytes) {
      return yield* Effect.fail(
        new InvalidInput({
          message: `${path} is ${bytes.byteLength} bytes as a tar; a copy is limited to ${maxBytes}`
        })
      )
    }
    return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  })

/**
 * Unpacks a transfer in a staging directory of the scope: the path of its `payload`, which must be a
 * file or a directory (a top-level link is refused: it could name a host file).
 */
export const unpack = (parent: string, bytes: Uint8Array) =>
  Effect.gen(function*() {
    const dir = yield* stagingDir(parent)
    yield* tar(["-x", "--no-same-owner", "--no-same-permissions", "-C", dir, "-f", "-"], bytes)
    const entries = NodeFs.readdirSync(dir)
    const payload = NodePath.join(dir, "payload")
    const stat = entries.length === 1 && entries[0] === "payload" ? NodeFs.lstatSync(payload) : undefined
    if (stat === undefined || (!stat.isFile() && !stat.isDirectory())) {
      return yield* Effect.fail(
        new InvalidInput({ message: "a transfer must hold one file or directory named payload" })
      )
    }
    return payload
  })

/** Packs `dir/payload` (as a runner's `cp` out left it). */
export const packStaged = (dir: string, maxBytes: number) => packPath(NodePath.join(dir, "payload"), maxBytes)

/**
 * Puts a transfer's payload at `hostPath` the way `cp` does: inside it when it is an existing
 * directory (under `name`), else at that path.
 */
export const unpackTo = (bytes: Uint8Array, hostPath: string, name: string) =>
  Effect.scoped(Effect.gen(function*() {
    const absolute = NodePath.resolve(hostPath)
    const into = NodeFs.existsSync(absolute) && NodeFs.statSync(absolute).isDirectory()
    const target = into ? NodePath.join(absolute, name) : absolute
    const payload = yield* unpack(NodePath.dirname(target), bytes)
    yield* Effect.try({
      try: () => {
        NodeFs.rmSync(target, { recursive: true, force: true })
        NodeFs.renameSync(payload, target)
      },
      catch: (error) => new Permanent({ message: `could not write ${target}: ${String(error)}` })
    })
    return target
  }))

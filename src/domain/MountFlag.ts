/**
 * `-v/--volume SOURCE:/guest/path[:ro|rw]`: what the source is (a named volume, a tar bundle, an ext4
 * image), where it goes in the guest, and the rules both must follow.
 */
import { Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { InvalidInput } from "./Errors.ts"
import { Mount } from "./Workspace.ts"

export const volumeNameRule =
  "1-63 characters: lowercase letters, digits and '-', starting with a letter or digit"

const volumeNamePattern = /^[a-z0-9][a-z0-9-]{0,62}$/

/** Why a candidate is not a volume name, or undefined when it is one. */
export const volumeNameProblem = (name: string): string | undefined => {
  if (name.length === 0) return "a volume name cannot be empty"
  if (name.includes("/")) return `"${name}" contains '/'; a volume name is ${volumeNameRule}`
  if (name.includes("..")) return `"${name}" contains '..'; a volume name is ${volumeNameRule}`
  if (/[A-Z]/.test(name)) return `"${name}" has uppercase letters; a volume name is ${volumeNameRule}`
  if (name.length > 63) return `"${name}" is longer than 63 characters`
  if (!volumeNamePattern.test(name)) return `"${name}" is not a volume name: ${volumeNameRule}`
  return undefined
}

export const invalidVolumeName = (name: string) =>
  new InvalidInput({
    message: `invalid volume name: ${volumeNameProblem(name) ?? name}`,
    remediation: `volume names are ${volumeNameRule}`
  })

/** Why a guest path cannot be a mountpoint, or undefined. It travels on the kernel command line. */
export const guestPathProblem = (path: string): string | undefined => {
  if (!path.startsWith("/")) return `guest path "${path}" is not absolute`
  if (path.split("/").some((part) => part === ".." || part === ".")) {
    return `guest path "${path}" contains '.' or '..'`
  }
  if (/[\s,:"\\]/.test(path) || [...path].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f)) {
    return `guest path "${path}" contains whitespace, ',', ':', '"', '\\' or a control character`
  }
  if (path.length > 200) return `guest path "${path.slice(0, 40)}…" is longer than 200 characters`
  if (NodePath.posix.normalize(path).replace(/\/+$/, "") === "") return "the guest path cannot be /"
  return undefined
}

const kindOf = (source: string): "bundle" | "image" | undefined =>
  /\.(tar|tar\.gz|tgz)$/i.test(source) ? "bundle" : /\.(ext4|img)$/i.test(source) ? "image" : undefined

const usage =
  "write -v SOURCE:/guest/path[:ro|rw], SOURCE a volume name, a .tar/.tar.gz/.tgz bundle or an .ext4/.img image"

const invalid = (message: string, remediation = usage) => new InvalidInput({ message, remediation })

/** Problems of a mount as recorded (from the CLI or an API caller); undefined when it is sound. */
export const mountProblem = (mount: Mount): string | undefined => {
  const target = guestPathProblem(mount.target)
  if (target !== undefined) return target
  if (mount.kind === "volume") return volumeNameProblem(mount.source)
  if (!NodePath.isAbsolute(mount.source)) return `the ${mount.kind} path "${mount.source}" is not absolute`
  if (kindOf(mount.source) !== mount.kind) {
    return `"${mount.source}" does not end like a ${mount.kind} (${
      mount.kind === "bundle" ? ".tar, .tar.gz, .tgz" : ".ext4, .img"
    })`
  }
  return undefined
}

/** Every mount sound, and no two on one guest path or one source read-write. */
export const validateMounts = (mounts: ReadonlyArray<Mount> | undefined) =>
  Effect.gen(function*() {
    const targets = new Set<string>()
    for (const mount of mounts ?? []) {
      const problem = mountProblem(mount)
      if (problem !== undefined) {
        return yield* invalid(`invalid mount ${mount.source}:${mount.target}: ${problem}`)
      }
      if (targets.has(mount.target)) {
        return yield* invalid(`two mounts on ${mount.target}`, "give each its own guest path")
      }
      targets.add(mount.target)
    }
    const volumes = (mounts ?? []).filter((m) => m.kind !== "bundle").map((m) => m.source)
    const twice = volumes.find((source, i) => volumes.indexOf(source) !== i)
    if (twice !== undefined) {
      return yield* invalid(`${twice} is mounted twice`, "a disk can be attached once per workspace")
    }
  })

/** Parses one `-v` value; relative paths are taken from `cwd` (the caller's working directory). */
export const parseMountFlag = (text: string, cwd: string) =>
  Effect.gen(function*() {
    let rest = text
    let readOnly = false
    const mode = /:(ro|rw)$/.exec(rest)
    if (mode !== null) {
      readOnly = mode[1] === "ro"
      rest = rest.slice(0, -3)
    }
    // The guest path is absolute: the last ':' followed by '/' splits it from the source.
    const at = rest.lastIndexOf(":/")
    if (at <= 0) return yield* invalid(`invalid --volume "${text}": no SOURCE:/guest/path`)
    const source = rest.slice(0, at)
    const target = NodePath.posix.normalize(rest.slice(at + 1)).replace(/(.)\/+$/, "$1")
    const targetProblem = guestPathProblem(rest.slice(at + 1))
    if (targetProblem !== undefined) {
      return yield* invalid(
        `invalid --volume "${text}": ${targetProblem}`,
        "the guest path must be absolute, not /, without '..'"
      )
    }
    const kind = kindOf(source)
    const looksLikePath = source.includes("/") || source.startsWith(".") || source.startsWith("~")
    if (kind === undefined) {
      const path = NodePath.resolve(cwd, source)
      if (
        (looksLikePath || NodeFs.existsSync(path))
        && NodeFs.statSync(path, { throwIfNoEntry: false })?.isDirectory()
      ) {
        return yield* invalid(
          `--volume ${source}: host directories cannot be mounted (the guest sees block devices only)`,
          `tar it and mount the bundle (tar -cf dir.tar -C ${source} . ; -v dir.tar:${target}), or copy files in with \`microagent cp\``
        )
      }
      if (looksLikePath) {
        return yield* invalid(
          `--volume ${source}: not a volume name, nor a .tar/.tar.gz/.tgz bundle, nor an .ext4/.img image`,
          `volume names are ${volumeNameRule}; files must end in .tar, .tar.gz, .tgz, .ext4 or .img`
        )
      }
      const problem = volumeNameProblem(source)
      if (problem !== undefined) {
        return yield* invalid(`invalid --volume "${text}": ${problem}`, `volume names are ${volumeNameRule}`)
      }
      return new Mount({ kind: "volume", source, target, readOnly })
    }
    const path = NodePath.resolve(cwd, source)
    const stat = NodeFs.statSync(path, { throwIfNoEntry: false })
    if (stat === undefined || !stat.isFile()) {
      return yield* invalid(`--volume ${source}: ${path} is not a file`, "check the path")
    }
    return new Mount({ kind, source: path, target, readOnly })
  })

/** Parses every `-v`; the set is validated as a whole. */
export const parseMountFlags = (texts: ReadonlyArray<string>, cwd: string) =>
  Effect.forEach(texts, (text) => parseMountFlag(text, cwd)).pipe(
    Effect.tap((mounts) => validateMounts(mounts))
  )

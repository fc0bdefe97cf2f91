/**
 * A guest path resolved inside a host directory that stands for the guest's root, the way a chroot
 * would resolve it: `..` stops at the root, and a symlink is followed inside the root (an absolute
 * target starts again at the root), so nothing reached this way lies outside it. The fake backend's
 * guest root and `cp` on a disk that is a host directory use it.
 */
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"

/** Too many symlinks on the way (like ELOOP). */
export class RootedPathLoop extends Error {}

const maxHops = 40

const partsOf = (path: string) => path.split("/").filter((part) => part.length > 0 && part !== ".")

/**
 * The host path of `guestPath` inside `root`. Every existing component on the way is a real directory
 * of the root (symlinks are followed inside it); components that do not exist are kept as named. With
 * `followLast` false a symlink in the last place is the answer itself, not followed.
 */
export const resolveInRoot = (root: string, guestPath: string, followLast = true): string => {
  const done: Array<string> = []
  const pending = partsOf(guestPath)
  let hops = 0
  while (pending.length > 0) {
    const part = pending.shift()!
    if (part === "..") {
      done.pop()
      continue
    }
    const candidate = NodePath.join(root, ...done, part)
    const stat = NodeFs.lstatSync(candidate, { throwIfNoEntry: false })
    if (stat?.isSymbolicLink() && (followLast || pending.length > 0)) {
      if (++hops > maxHops) throw new RootedPathLoop(`${guestPath}: too many levels of symbolic links`)
      const target = NodeFs.readlinkSync(candidate)
      if (target.startsWith("/")) done.length = 0
      pending.unshift(...partsOf(target))
      continue
    }
    done.push(part)
  }
  return NodePath.join(root, ...done)
}

/** The guest path (absolute) of a host path inside `root`. */
export const guestPathOf = (root: string, hostPath: string): string =>
  `/${NodePath.relative(root, hostPath).split(NodePath.sep).filter((p) => p.length > 0).join("/")}`

/**
 * The endpoints of `cp` and `artifacts get`: which side is the workspace, and guest and host paths that
 * cannot lead anywhere the user did not name. Pure, so the fast tier covers every rule.
 */
import * as NodePath from "node:path"
import { InvalidInput } from "../../domain/Errors.ts"
import { nameProblem } from "../../domain/Workspace.ts"

export type Endpoint =
  | { readonly _tag: "Host"; readonly path: string }
  | { readonly _tag: "Guest"; readonly workspace: string; readonly path: string }

export interface CopyPlan {
  readonly workspace: string
  readonly direction: "in" | "out"
  /** As the user wrote it (the CLI makes it absolute against its own working directory). */
  readonly hostPath: string
  readonly guestPath: string
}

/** `NAME:/path` is a workspace path; anything with a `/` before the first `:`, or `C:\`, is the host's. */
export const parseEndpoint = (text: string): Endpoint => {
  const colon = text.indexOf(":")
  const before = colon === -1 ? "" : text.slice(0, colon)
  if (
    colon <= 0 || before.includes("/") || /^[A-Za-z]:[\\]/.test(text) || nameProblem(before) !== undefined
  ) {
    return { _tag: "Host", path: text }
  }
  return { _tag: "Guest", workspace: before, path: text.slice(colon + 1) }
}

const invalid = (message: string, remediation: string) => new InvalidInput({ message, remediation })

/**
 * A guest path as the programs use it: absolute, normalised, with no `..` component (which could climb
 * out of a mount or be read differently by the guest and the offline tools), no NUL and no newline.
 */
export const checkGuestPath = (path: string): string | InvalidInput => {
  if (path.length === 0) {
    return invalid("the guest path is empty", "write WORKSPACE:/absolute/path")
  }
  if (!path.startsWith("/")) {
    return invalid(`the guest path "${path}" is relative`, "write an absolute guest path: WORKSPACE:/path")
  }
  if (/[\0\n\r]/.test(path)) {
    return invalid(`the guest path ${JSON.stringify(path)} contains NUL or a newline`, "rename the file")
  }
  const parts = path.split("/").filter((part) => part.length > 0 && part !== ".")
  if (parts.includes("..")) {
    return invalid(
      `the guest path "${path}" contains a ".." component`,
      'write the path without ".." (resolve it yourself)'
    )
  }
  return `/${parts.join("/")}`
}

/** `SRC DST`: exactly one side in a workspace; the host side is made absolute against `cwd`. */
export const planCopy = (source: string, destination: string, cwd: string): CopyPlan | InvalidInput => {
  const from = parseEndpoint(source)
  const to = parseEndpoint(destination)
  if (from._tag === "Guest" && to._tag === "Guest") {
    return invalid(
      "both sides of cp are workspace paths",
      "copy through the host: cp WS1:/path ./tmp && cp ./tmp WS2:/path"
    )
  }
  if (from._tag === "Host" && to._tag === "Host") {
    return invalid("neither side of cp is a workspace path", "name one side as WORKSPACE:/absolute/path")
  }
  const guest = from._tag === "Guest" ? from : (to as Extract<Endpoint, { _tag: "Guest" }>)
  const host = from._tag === "Host" ? from : (to as Extract<Endpoint, { _tag: "Host" }>)
  if (host.path.length === 0) return invalid("the host path is empty", "name a host file or directory")
  if (host.path.includes("\0")) return invalid("the host path contains NUL", "name a host path")
  const guestPath = checkGuestPath(guest.path)
  if (guestPath instanceof InvalidInput) return guestPath
  return {
    workspace: guest.workspace,
    direction: from._tag === "Host" ? "in" : "out",
    hostPath: NodePath.resolve(cwd, host.path),
    guestPath
  }
}

/** The last component of a normalised guest path; `/` has none and cannot be copied out. */
export const guestBasename = (path: string): string | InvalidInput => {
  const base = NodePath.posix.basename(path)
  return base.length === 0 || base === "/"
    ? invalid("cannot copy the guest's root directory itself", "name a directory below /")
    : base
}

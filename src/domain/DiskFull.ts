/**
 * A full file system is `resource_exhausted`, not an unexplained failure: the error names what was
 * being written and where, so the user knows what to free. Recognises Node's errno codes and the
 * text tools (mke2fs, debugfs, cp, tar) print for ENOSPC and EDQUOT.
 */
import { ResourceExhausted } from "./Errors.ts"

const noSpaceText =
  /No space left on device|Disk quota exceeded|ENOSPC|EDQUOT|Could not allocate block|database or disk is full|SQLITE_FULL/i

export const isNoSpace = (cause: unknown): boolean => {
  const code = (cause as { readonly code?: unknown } | undefined)?.code
  if (code === "ENOSPC" || code === "EDQUOT") return true
  const text = cause instanceof Error ? cause.message : typeof cause === "string" ? cause : ""
  return noSpaceText.test(text)
}

/** `what` failed because the file system holding `path` is full. */
export const diskFull = (what: string, path: string) =>
  new ResourceExhausted({
    message: `the file system holding ${path} is full: ${what}`,
    remediation:
      "free space there (`microagent image prune`, `microagent gc`, or remove other files), then run the command again"
  })

const messageOf = (error: unknown): string =>
  typeof error === "object" && error !== null && "message" in error ? String(error.message) : String(error)

/**
 * For `Effect.mapError`: an error whose cause is a full file system becomes `diskFull(what, path)`;
 * any other error passes through unchanged.
 */
export const classifyNoSpace = (what: string, path: string) => <E>(error: E): E | ResourceExhausted =>
  error instanceof ResourceExhausted || !isNoSpace(messageOf(error)) ? error : diskFull(what, path)

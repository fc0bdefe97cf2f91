/**
 * Builds exec requests the way a container user expects: the image's Env, User and WorkingDir are the
 * defaults, the workspace's env overrides the image's, and the request's overrides both.
 */
import { ExecRequest } from "../../domain/Exec.ts"
import type { ExecSettings } from "../../domain/Requests.ts"
import type { Workspace } from "../../domain/Workspace.ts"
import { guestBundle, guestCaFile } from "./EgressCa.ts"

/** The caller's settings of a command (domain/Requests.ts `ExecSettings`), over the defaults. */
export type ExecOverrides = ExecSettings

const imageEnv = (workspace: Workspace): Record<string, string> => {
  const env: Record<string, string> = {}
  for (const entry of workspace.image.env) {
    const at = entry.indexOf("=")
    if (at > 0) env[entry.slice(0, at)] = entry.slice(at + 1)
  }
  return env
}

/**
 * Under `--egress mitm`: clients that carry a CA bundle of their own (Node, Python's requests and pip
 * with certifi) are pointed at the interceptor's CA and the system bundle that holds it (EgressCa.ts).
 */
const mitmEnv = (workspace: Workspace): Record<string, string> =>
  workspace.egress?.mode === "mitm"
    ? { NODE_EXTRA_CA_CERTS: guestCaFile, REQUESTS_CA_BUNDLE: guestBundle, PIP_CERT: guestBundle }
    : {}

export const execRequestFor = (
  workspace: Workspace,
  argv: readonly [string, ...Array<string>],
  overrides: ExecOverrides = {}
): ExecRequest => {
  const cwd = overrides.cwd ?? workspace.image.workingDir
  const user = overrides.user ?? workspace.image.user
  return new ExecRequest({
    argv,
    env: { ...mitmEnv(workspace), ...imageEnv(workspace), ...workspace.env, ...overrides.env },
    ...(cwd ? { cwd } : {}),
    ...(user ? { user } : {}),
    ...(overrides.timeoutSeconds === undefined ? {} : { timeoutSeconds: overrides.timeoutSeconds }),
    ...(overrides.stdoutLimit === undefined ? {} : { stdoutLimit: overrides.stdoutLimit }),
    ...(overrides.stderrLimit === undefined ? {} : { stderrLimit: overrides.stderrLimit })
  })
}

/** What the image runs when no command is given: Entrypoint followed by Cmd. */
export const imageCommand = (workspace: Workspace): ReadonlyArray<string> => [
  ...workspace.image.entrypoint,
  ...workspace.image.cmd
]

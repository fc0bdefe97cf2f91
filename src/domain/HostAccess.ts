/**
 * What an MCP client may touch on the server's host: the directories ("roots") the operator granted,
 * narrowed to the ones the client itself declares, and the secrets the operator allowed. The MCP client
 * is driven by a model that reads what untrusted code in a workspace writes, so every host path and
 * secret reference an MCP tool takes goes through this policy; the CLI and the RPC API (operator
 * surfaces) do not.
 */
import { Schema } from "effect"
import * as NodePath from "node:path"

/**
 * A host path checked against the roots: absolute, without a symlink in any component (each was
 * resolved with realpath, one at a time), inside a granted root. For writes, the last component was not
 * a symlink either. Only the MCP server's host-access check makes one; the tools that take a host path
 * pass nothing else on to the runtime.
 */
export const ConfinedHostPath = Schema.String.pipe(Schema.brand("ConfinedHostPath"))
export type ConfinedHostPath = typeof ConfinedHostPath.Type

/** What a path is checked for: reading it, or writing it (or into it, for a directory). */
export type HostAccessMode = "read" | "write"

/** Whether `path` is `root` or below it; both absolute and normalised (real paths). */
export const isWithin = (root: string, path: string): boolean => {
  const relative = NodePath.relative(root, path)
  return relative === "" || (!relative.startsWith("..") && !NodePath.isAbsolute(relative))
}

/**
 * The roots both sides grant: where one root lies inside the other's, the inner one. Real paths in,
 * real paths out; none in common is an empty list (no host access).
 */
export const intersectRoots = (
  operator: ReadonlyArray<string>,
  client: ReadonlyArray<string>
): ReadonlyArray<string> => {
  const out = new Set<string>()
  for (const a of operator) {
    for (const b of client) {
      if (isWithin(a, b)) out.add(b)
      else if (isWithin(b, a)) out.add(a)
    }
  }
  return [...out].sort()
}

/** `--allow-secret-env` patterns: environment variable names, `*` matching any run of name characters. */
export const envPatternProblem = (pattern: string): string | undefined =>
  /^[A-Za-z_*][A-Za-z0-9_*]*$/.test(pattern)
    ? undefined
    : `"${pattern}" is not an environment variable pattern (letters, digits, '_' and '*', e.g. APP_*)`

export const matchesEnvPattern = (pattern: string, variable: string): boolean =>
  new RegExp(
    `^${pattern.split("*").map((part) => part.replace(/[^A-Za-z0-9_]/g, "")).join("[A-Za-z0-9_]*")}$`
  )
    .test(variable)

/** The host-access policy in force, as `microagent.describe` reports it. */
export const HostAccessPolicy = Schema.Struct({
  /** Roots the operator granted (`--host-root`, `MICROAGENT_MCP_HOST_ROOTS`), as real paths. */
  operatorRoots: Schema.Array(Schema.String),
  /** Whether the client declared the roots capability; when it did, only the intersection is usable. */
  clientDeclaresRoots: Schema.Boolean,
  /** The client's roots as last listed (real paths); absent when it declares none. */
  clientRoots: Schema.optional(Schema.Array(Schema.String)),
  /** Where host paths may be read and written now; empty means no host file access at all. */
  effectiveRoots: Schema.Array(Schema.String),
  /** Secret names the operator bound (`--allow-secret NAME=REF`), with their references. */
  boundSecrets: Schema.Array(Schema.Struct({ name: Schema.String, ref: Schema.String })),
  /** Environment variables of the server that `env:` references may name. */
  allowedEnv: Schema.Array(Schema.String),
  /** Rules that always hold. */
  rules: Schema.Array(Schema.String)
})
export type HostAccessPolicy = typeof HostAccessPolicy.Type

/** How an operator grants host access; remediations of denials say it. */
export const grantAdvice = "start the server with --host-root DIR (repeatable), or set "
  + "MICROAGENT_MCP_HOST_ROOTS=DIR[:DIR…] in the MCP client's configuration of the server"

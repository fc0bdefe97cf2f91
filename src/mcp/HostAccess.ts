/**
 * The MCP server's gate to the host. Every host path an MCP tool takes becomes a `ConfinedHostPath`
 * here, and every secret reference is checked here, before anything is read, written or resolved.
 *
 * Paths are resolved one component at a time (`..` applied to the real directory reached so far, each
 * symlink replaced by its realpath), and the real path must lie inside an effective root: the
 * operator's roots, narrowed to the client's when it declares the MCP roots capability. A write's last
 * component may not be a symlink at all. The runtime is handed the resolved real path, so what it opens
 * has no symlink left in it; its writers never follow one at the last component either (a file lands
 * in a fresh O_EXCL|O_NOFOLLOW temporary that is renamed over the target, a tree is extracted to a new
 * directory), and nothing an MCP client can ask for replaces an existing directory on the host with a
 * symlink, so the check cannot be raced from the workspace side (see docs/mcp.md).
 */
import * as McpSchema from "@effect/ai/McpSchema"
import { Context, Duration, Effect, Layer, Option, Ref } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { fileURLToPath } from "node:url"
import { InvalidInput, NotFound, Permanent, PolicyDenied } from "../domain/Errors.ts"
import {
  type ConfinedHostPath,
  envPatternProblem,
  grantAdvice,
  type HostAccessMode,
  type HostAccessPolicy,
  intersectRoots,
  isWithin,
  matchesEnvPattern
} from "../domain/HostAccess.ts"
import { formatSource, parseSecretFlag, parseSource, secretNamePattern } from "../domain/SecretRefs.ts"
import { SecretRef } from "../domain/Workspace.ts"
import { StateStore } from "../services/StateStore.ts"

/** What the operator granted when starting the server. */
export interface HostGrants {
  /** Directories (made real paths at start). */
  readonly roots: ReadonlyArray<string>
  /** `--allow-secret NAME=REF`: names bound to references the operator chose. */
  readonly boundSecrets: ReadonlyArray<SecretRef>
  /** `--allow-secret NAME` and `--allow-secret-env PATTERN`: variables `env:` may name. */
  readonly allowedEnv: ReadonlyArray<string>
}

/** The environment variable an MCP client configuration can set instead of `--host-root`. */
export const hostRootsVariable = "MICROAGENT_MCP_HOST_ROOTS"

const denied = (message: string, remediation: string) => new PolicyDenied({ message, remediation })

/**
 * The grants from `serve mcp`'s flags and environment: roots must be existing directories (made real
 * paths), secret grants well-formed. Relative paths are the server's working directory's.
 */
export const parseGrants = (options: {
  readonly roots: ReadonlyArray<string>
  readonly allowSecret: ReadonlyArray<string>
  readonly allowSecretEnv: ReadonlyArray<string>
  readonly env?: string | undefined
  readonly cwd: string
}) =>
  Effect.gen(function*() {
    const given = [
      ...options.roots,
      ...(options.env ?? "").split(NodePath.delimiter).filter((dir) => dir.length > 0)
    ]
    const roots = new Set<string>()
    for (const dir of given) {
      const real = yield* Effect.try({
        try: () => NodeFs.realpathSync.native(NodePath.resolve(options.cwd, dir)),
        catch: () =>
          new InvalidInput({
            message: `host root ${dir} does not exist`,
            remediation: "name an existing directory with --host-root (or in MICROAGENT_MCP_HOST_ROOTS)"
          })
      })
      if (!NodeFs.statSync(real).isDirectory()) {
        return yield* new InvalidInput({
          message: `host root ${dir} is not a directory`,
          remediation: "a root is a directory the MCP client may read and write below"
        })
      }
      roots.add(real)
    }
    const boundSecrets: Array<SecretRef> = []
    const allowedEnv: Array<string> = []
    for (const grant of options.allowSecret) {
      if (grant.includes("=")) {
        boundSecrets.push(yield* parseSecretFlag(grant, options.cwd))
      } else if (secretNamePattern.test(grant)) {
        allowedEnv.push(grant)
      } else {
        return yield* new InvalidInput({
          message: `invalid --allow-secret "${grant}"`,
          remediation: "write --allow-secret NAME (the server's environment variable NAME) or NAME=env:VAR|"
            + "file:PATH|dotenv:PATH[:KEY]"
        })
      }
    }
    for (const pattern of options.allowSecretEnv) {
      const problem = envPatternProblem(pattern)
      if (problem !== undefined) {
        return yield* new InvalidInput({
          message: `invalid --allow-secret-env: ${problem}`,
          remediation: "write a variable name or a pattern with '*', e.g. --allow-secret-env 'APP_*'"
        })
      }
      allowedEnv.push(pattern)
    }
    return { roots: [...roots].sort(), boundSecrets, allowedEnv } satisfies HostGrants
  })

const rules = [
  "host paths are resolved component by component (realpath) and must lie inside an effective root",
  "writes never follow a symlink at the last component of the host path",
  "symlinks inside a directory copied into a workspace are copied as symlinks, never followed",
  "file: and dotenv: secret references must lie inside an effective root (unless the operator bound "
  + "the name to that reference with --allow-secret NAME=REF)",
  "env: secret references must name a variable the operator allowed (--allow-secret, --allow-secret-env)"
]

/** Roots as the client last listed them; `None` until asked (and again after list_changed). */
interface ClientRoots {
  readonly declared: boolean
  readonly listed: Option.Option<ReadonlyArray<string>>
}

export interface HostAccessShape {
  /** Called with the client's `initialize` parameters (whether it declares roots). */
  readonly initialized: (params: Record<string, unknown>) => void
  /** `notifications/roots/list_changed`: the next call lists the roots again. */
  readonly rootsChanged: () => void
  /** The policy in force (lists the client's roots if needed). */
  readonly policy: Effect.Effect<HostAccessPolicy, never, McpSchema.McpServerClient>
  /** A host path the call may use for `mode`, or a `policy_denied` naming it and how to grant it. */
  readonly check: (
    path: string,
    mode: HostAccessMode,
    context: DenialContext
  ) => Effect.Effect<
    ConfinedHostPath,
    PolicyDenied | NotFound | Permanent | InvalidInput,
    McpSchema.McpServerClient
  >
  /**
   * Secret references as an MCP client gives them (`NAME` for a name the operator granted, or
   * `NAME=SOURCE`), each allowed by the policy, with file paths confined; a refused one names the
   * reference, never a value.
   */
  readonly secretRefs: (
    texts: ReadonlyArray<string>,
    context: DenialContext
  ) => Effect.Effect<
    ReadonlyArray<SecretRef>,
    PolicyDenied | InvalidInput | NotFound | Permanent,
    McpSchema.McpServerClient
  >
  /** Recorded references (a start resolves them again): each must still be allowed. */
  readonly checkRefs: (
    refs: ReadonlyArray<SecretRef>,
    context: DenialContext
  ) => Effect.Effect<
    ReadonlyArray<SecretRef>,
    PolicyDenied | InvalidInput | NotFound | Permanent,
    McpSchema.McpServerClient
  >
}

/** Who asked: the tool, and the workspace whose events record a denial, when there is one. */
export interface DenialContext {
  readonly tool: string
  readonly workspace?: string | undefined
}

export class HostAccess extends Context.Tag("microagent/mcp/HostAccess")<HostAccess, HostAccessShape>() {
  static readonly layer = (grants: HostGrants) => Layer.effect(HostAccess, make(grants))
}

const errno = (cause: unknown) => (cause as NodeJS.ErrnoException | undefined)?.code

/** Where resolving a host path got: its real path, or how far it got before a component was missing. */
export type Resolution =
  | { readonly _tag: "Resolved"; readonly path: string; readonly symlink: boolean }
  | { readonly _tag: "Missing"; readonly near: string }

/**
 * The real path of `raw` for `mode`, walking one component at a time; no containment check yet.
 * A read needs the whole path to exist; a write needs its parent, and its last component may not be a
 * symlink (`symlink: true` says it is one). A missing component gives where the walk got (the real path
 * so far and the rest as written), so that the caller can tell "outside the roots" before "missing".
 */
export const resolveHostPath = (raw: string, mode: HostAccessMode, cwd: string) =>
  Effect.try({
    try: (): Resolution => {
      if (raw.includes("\0")) {
        throw new InvalidInput({ message: "the host path contains NUL", remediation: "" })
      }
      const absolute = NodePath.isAbsolute(raw) ? raw : `${cwd}/${raw}`
      const parts = absolute.split("/").filter((part) => part.length > 0 && part !== ".")
      let current = "/"
      for (let i = 0; i < parts.length; i++) {
        const part = parts[i]!
        const last = i === parts.length - 1
        if (part === "..") {
          current = NodePath.dirname(current)
          continue
        }
        const next = NodePath.join(current, part)
        const missing = (): Resolution => ({
          _tag: "Missing",
          near: NodePath.resolve(current, ...parts.slice(i))
        })
        let stat: NodeFs.Stats
        try {
          stat = NodeFs.lstatSync(next)
        } catch (cause) {
          if (errno(cause) !== "ENOENT" && errno(cause) !== "ENOTDIR") throw cause
          return last && mode === "write" ? { _tag: "Resolved", path: next, symlink: false } : missing()
        }
        if (stat.isSymbolicLink()) {
          if (last && mode === "write") return { _tag: "Resolved", path: next, symlink: true }
          try {
            current = NodeFs.realpathSync.native(next)
          } catch (cause) {
            if (errno(cause) === "ENOENT" || errno(cause) === "ENOTDIR") {
              // A dangling link: where it points decides, as far as it can be known.
              const target = NodePath.resolve(current, NodeFs.readlinkSync(next))
              return { _tag: "Missing", near: NodePath.resolve(target, ...parts.slice(i + 1)) }
            }
            throw cause
          }
        } else {
          if (!last && !stat.isDirectory()) return missing()
          current = next
        }
      }
      return { _tag: "Resolved", path: current, symlink: false }
    },
    catch: (cause) =>
      cause instanceof InvalidInput
        ? cause
        : new Permanent({
          message: `cannot resolve host path ${raw}: ${
            cause instanceof Error ? cause.message : String(cause)
          }`,
          remediation: "check the path and its permissions"
        })
  })

/** How long a client gets to answer `roots/list`. */
const rootsTimeout = Duration.seconds(10)

export const make = (grants: HostGrants) =>
  Effect.gen(function*() {
    const client = yield* Ref.make<ClientRoots>({ declared: false, listed: Option.none() })
    const store = yield* Effect.serviceOption(StateStore)

    const logDenial = (error: PolicyDenied, context: DenialContext) =>
      Effect.gen(function*() {
        yield* Effect.logWarning(`mcp: ${context.tool}: policy_denied: ${error.message}`)
        if (context.workspace !== undefined && Option.isSome(store)) {
          const workspace = context.workspace
          yield* store.value.find(workspace).pipe(
            Effect.flatMap((found) =>
              Option.isSome(found)
                ? store.value.appendEvent(workspace, {
                  type: "policy_denied",
                  detail: `${context.tool}: ${error.message}`
                })
                : Effect.void
            ),
            Effect.ignore
          )
        }
      })

    /** Fails with the denial, logged. */
    const deny = (context: DenialContext, message: string, remediation: string) => {
      const error = denied(message, remediation)
      return Effect.zipRight(logDenial(error, context), Effect.fail(error))
    }

    const listClientRoots = Effect.gen(function*() {
      const { getClient } = yield* McpSchema.McpServerClient
      const rpc = yield* getClient
      const listed = yield* rpc["roots/list"](undefined).pipe(Effect.timeout(rootsTimeout))
      const roots: Array<string> = []
      for (const root of listed.roots) {
        if (!root.uri.startsWith("file:")) continue
        try {
          roots.push(NodeFs.realpathSync.native(fileURLToPath(root.uri)))
        } catch {
          // A root that does not exist grants nothing.
        }
      }
      return roots.sort()
    }).pipe(Effect.scoped)

    /** The roots usable now, and the client's listing when it declares roots. */
    const effective = Effect.gen(function*() {
      const state = yield* Ref.get(client)
      if (!state.declared) return { roots: grants.roots, client: Option.none<ReadonlyArray<string>>() }
      let listed = state.listed
      if (Option.isNone(listed)) {
        const fetched = yield* Effect.either(listClientRoots)
        if (fetched._tag === "Left") {
          yield* Effect.logWarning("mcp: the client did not answer roots/list; no host roots until it does")
          return { roots: [] as ReadonlyArray<string>, client: Option.some([] as ReadonlyArray<string>) }
        }
        listed = Option.some(fetched.right)
        yield* Ref.update(client, (s) => (s.declared ? { ...s, listed } : s))
      }
      const clientRoots = Option.getOrElse(listed, (): ReadonlyArray<string> => [])
      return { roots: intersectRoots(grants.roots, clientRoots), client: Option.some(clientRoots) }
    })

    const check: HostAccessShape["check"] = (raw, mode, context) =>
      Effect.gen(function*() {
        const { roots, client: clientRoots } = yield* effective
        if (roots.length === 0) {
          return yield* grants.roots.length === 0
            ? deny(
              context,
              `host path ${raw}: this MCP server grants no host file access`,
              `the operator can grant directories: ${grantAdvice}`
            )
            : deny(
              context,
              `host path ${raw}: none of the server's roots (${
                grants.roots.join(", ")
              }) is inside a root the `
                + `client declared (${Option.getOrElse(clientRoots, () => []).join(", ") || "none"})`,
              "add one of the server's roots (or a directory below it) to the client's roots"
            )
        }
        const resolution = yield* resolveHostPath(raw, mode, process.cwd())
        const outside = (path: string) =>
          deny(
            context,
            `host path ${raw}${
              path === raw ? "" : ` (${path})`
            } is outside the host roots granted to this MCP `
              + `client (${roots.join(", ")})`,
            `use a path inside ${roots.join(" or ")}; to grant more, ${grantAdvice}`
          )
        if (resolution._tag === "Missing") {
          // Outside the roots, whether something is there is nobody's business.
          if (!roots.some((root) => isWithin(root, resolution.near))) return yield* outside(resolution.near)
          return yield* new NotFound({
            message: `host path ${raw} does not exist${mode === "write" ? " (nor does its directory)" : ""}`,
            remediation: mode === "write"
              ? "create the directory first, or name an existing one"
              : "check the path"
          })
        }
        const resolved = resolution
        if (resolved.symlink) {
          return yield* deny(
            context,
            `host path ${raw} is a symlink; writes do not follow symlinks`,
            "name the real path (inside a root), or a directory to write into"
          )
        }
        if (!roots.some((root) => isWithin(root, resolved.path))) return yield* outside(resolved.path)
        return resolved.path as ConfinedHostPath
      })

    const envAllowed = (variable: string) =>
      grants.allowedEnv.some((pattern) => matchesEnvPattern(pattern, variable))

    const checkRefs: HostAccessShape["checkRefs"] = (refs, context) =>
      Effect.forEach(refs, (ref) =>
        Effect.gen(function*() {
          const bound = grants.boundSecrets.find((b) => b.name === ref.name)
          // The operator's own binding is used as the operator wrote it.
          if (bound !== undefined && bound.source === ref.source) return ref
          const source = yield* parseSource(ref.name, ref.source, process.cwd())
          const reference = `${ref.name}=${ref.source}`
          switch (source.scheme) {
            case "env":
              if (envAllowed(source.variable)) return ref
              return yield* deny(
                context,
                `secret reference ${reference} is not allowed: the server's environment variable `
                  + `${source.variable} is not granted to MCP clients`,
                `the operator can allow it: serve mcp --allow-secret ${source.variable} (or --allow-secret-env `
                  + `'PREFIX_*'), or bind the name: --allow-secret ${ref.name}=REF`
              )
            case "file":
            case "dotenv": {
              const path = yield* check(source.path, "read", context).pipe(
                Effect.catchTag("PolicyDenied", (error) =>
                  Effect.fail(
                    denied(
                      `secret reference ${reference} is not allowed: ${error.message}`,
                      error.remediation
                    )
                  ))
              )
              return new SecretRef({
                name: ref.name,
                source: formatSource(source.scheme === "file" ? { ...source, path } : { ...source, path }),
                ...(ref.use === undefined ? {} : { use: ref.use })
              })
            }
          }
        }))

    const secretRefs: HostAccessShape["secretRefs"] = (texts, context) =>
      Effect.gen(function*() {
        const refs: Array<SecretRef> = []
        for (const text of texts) {
          if (text.includes("=")) {
            refs.push(yield* parseSecretFlag(text, process.cwd()))
            continue
          }
          // A bare name: the operator's binding of it, or the server's variable of that name.
          const bound = grants.boundSecrets.find((b) => b.name === text)
          if (bound !== undefined) refs.push(bound)
          else if (secretNamePattern.test(text) && envAllowed(text)) {
            refs.push(new SecretRef({ name: text, source: `env:${text}` }))
          } else {
            return yield* deny(
              context,
              `secret ${text} is not granted to MCP clients`,
              `the operator can grant it: serve mcp --allow-secret ${text} or --allow-secret ${text}=REF`
            )
          }
        }
        const names = refs.map((r) => r.name)
        const twice = names.find((n, i) => names.indexOf(n) !== i)
        if (twice !== undefined) {
          return yield* new InvalidInput({
            message: `secret ${twice} is given twice`,
            remediation: "give each secret once"
          })
        }
        return yield* checkRefs(refs, context)
      })

    return HostAccess.of({
      initialized: (params) => {
        const capabilities = params.capabilities as { roots?: unknown } | undefined
        const declared = typeof capabilities === "object" && capabilities !== null
          && typeof capabilities.roots === "object" && capabilities.roots !== null
        Effect.runSync(Ref.set(client, { declared, listed: Option.none() }))
      },
      rootsChanged: () => Effect.runSync(Ref.update(client, (s) => ({ ...s, listed: Option.none() }))),
      policy: Effect.map(effective, ({ client: clientRoots, roots }) => ({
        operatorRoots: grants.roots,
        clientDeclaresRoots: Option.isSome(clientRoots),
        ...(Option.isSome(clientRoots) ? { clientRoots: clientRoots.value } : {}),
        effectiveRoots: roots,
        boundSecrets: grants.boundSecrets.map((b) => ({ name: b.name, ref: b.source })),
        allowedEnv: grants.allowedEnv,
        rules
      })),
      check,
      secretRefs,
      checkRefs
    })
  })

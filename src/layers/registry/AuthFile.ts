/**
 * The auth file `registry login` writes and the pull and push paths read: `{"auths": {"host": {"auth":
 * base64(user:password)}}}`, the format Podman, Skopeo and Docker share. Written atomically (a 0600
 * temporary file in the same directory, fsynced, renamed over), keeping every other entry and key.
 */
import { Effect } from "effect"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { NotFound, Permanent } from "../../domain/Errors.ts"
import type { RegistryLogin } from "../../services/Registry.ts"
import { type CredentialSources, normalizeAuthKey } from "./Credentials.ts"

/** `$REGISTRY_AUTH_FILE` when set, else `<home>/auth.json`: the file `registry login` writes. */
export const loginFile = (sources: CredentialSources): string | undefined =>
  sources.authFile !== undefined && sources.authFile.length > 0 ? sources.authFile : sources.homeAuthFile

type AuthDocument = { auths?: Record<string, unknown> } & Record<string, unknown>

const failure = (file: string, what: string) => (cause: unknown) =>
  cause instanceof Permanent ? cause : new Permanent({
    message: `${what} ${file}: ${cause instanceof Error ? cause.message : String(cause)}`,
    remediation: "check the file's permissions and that it holds JSON"
  })

const readDocument = (file: string): AuthDocument => {
  let text: string
  try {
    text = NodeFs.readFileSync(file, "utf8")
  } catch (cause) {
    if ((cause as { code?: string }).code === "ENOENT") return {}
    throw cause
  }
  if (text.trim() === "") return {}
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    // Never overwrite a file we cannot read: it may hold credentials of other tools.
    throw new Permanent({
      message: `${file} is not valid JSON; it was left unchanged`,
      remediation: "fix or move the file, then log in again"
    })
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new Permanent({ message: `${file} does not hold a JSON object; it was left unchanged` })
  }
  return parsed as AuthDocument
}

const writeAtomically = (file: string, document: AuthDocument) => {
  const dir = NodePath.dirname(file)
  NodeFs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  const temp = NodePath.join(
    dir,
    `.${NodePath.basename(file)}.tmp-${process.pid}-${NodeCrypto.randomBytes(4).toString("hex")}`
  )
  try {
    const fd = NodeFs.openSync(temp, "wx", 0o600)
    try {
      NodeFs.writeFileSync(fd, `${JSON.stringify(document, null, 2)}\n`)
      NodeFs.fsyncSync(fd)
    } finally {
      NodeFs.closeSync(fd)
    }
    NodeFs.chmodSync(temp, 0o600)
    NodeFs.renameSync(temp, file)
  } finally {
    NodeFs.rmSync(temp, { force: true })
  }
}

/** Keys of `auths` that name `host` (`https://index.docker.io/v1/` names docker.io). */
const keysFor = (auths: Record<string, unknown>, host: string) =>
  Object.keys(auths).filter((key) => normalizeAuthKey(key) === host)

/** Saves (or replaces) the credential of `host`, keeping every other entry. */
export const saveLogin = (file: string, host: string, username: string, password: string) =>
  Effect.try({
    try: () => {
      const key = normalizeAuthKey(host)
      const document = readDocument(file)
      const auths: Record<string, unknown> = { ...document.auths }
      for (const old of keysFor(auths, key)) delete auths[old]
      auths[key] = { auth: Buffer.from(`${username}:${password}`).toString("base64") }
      writeAtomically(file, { ...document, auths })
    },
    catch: failure(file, "cannot write")
  })

/** Removes the credential of `host`; not_found when the file holds none. */
export const removeLogin = (file: string, host: string) =>
  Effect.flatMap(
    Effect.try({
      try: () => {
        const key = normalizeAuthKey(host)
        const document = readDocument(file)
        const auths: Record<string, unknown> = { ...document.auths }
        const found = keysFor(auths, key)
        if (found.length === 0) return false
        for (const old of found) delete auths[old]
        writeAtomically(file, { ...document, auths })
        return true
      },
      catch: failure(file, "cannot write")
    }),
    (removed) =>
      removed ? Effect.void : Effect.fail(
        new NotFound({
          message: `no credential for ${normalizeAuthKey(host)} in ${file}`,
          remediation: "`microagent registry list` shows the saved logins"
        })
      )
  )

const usernameOf = (entry: unknown): string | undefined => {
  const e = entry as { auth?: string; username?: string; identitytoken?: string } | null
  if (e === null || typeof e !== "object") return undefined
  if (typeof e.auth === "string" && e.auth.length > 0) {
    const decoded = Buffer.from(e.auth, "base64").toString("utf8")
    const colon = decoded.indexOf(":")
    return colon < 0 ? undefined : decoded.slice(0, colon)
  }
  if (typeof e.username === "string") return e.username
  return e.identitytoken !== undefined ? "<token>" : undefined
}

/**
 * Every saved login the pull and push paths can read, in the order they are consulted: hosts, usernames
 * and the file (or credential helper) they come from. Never a password.
 */
export const listLogins = (sources: CredentialSources) =>
  Effect.try({
    try: () => {
      const logins: Array<RegistryLogin> = []
      const files = [sources.authFile, sources.homeAuthFile, sources.dockerConfig]
      for (const file of new Set(files.filter((f): f is string => f !== undefined && f.length > 0))) {
        if (!NodeFs.existsSync(file)) continue
        const document = readDocument(file) as AuthDocument & { credHelpers?: Record<string, string> }
        for (const [key, entry] of Object.entries(document.auths ?? {})) {
          const username = usernameOf(entry)
          logins.push({ registry: normalizeAuthKey(key), ...(username ? { username } : {}), source: file })
        }
        for (const [key, helper] of Object.entries(document.credHelpers ?? {})) {
          logins.push({ registry: normalizeAuthKey(key), source: `${file} (docker-credential-${helper})` })
        }
      }
      return logins
    },
    catch: failure("the auth files", "cannot read")
  })

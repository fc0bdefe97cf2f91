/**
 * Registry credentials, looked up the way Podman, Skopeo and Docker users already store them:
 * `$REGISTRY_AUTH_FILE`, then the Home's `auth.json`, then `$DOCKER_CONFIG/config.json` or
 * `~/.docker/config.json` (its `auths`, and credential helpers from `credHelpers`/`credsStore`, run as
 * `docker-credential-<name> get`). No file and no helper means anonymous access.
 */
import { Data, Effect } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"

export interface Credential {
  readonly username: string
  readonly password: string
  /** An OAuth2 refresh token (Docker's `identitytoken`), exchanged at the token endpoint. */
  readonly identityToken?: string | undefined
  readonly source: string
}

export class CredentialError extends Data.TaggedError("CredentialError")<{ readonly message: string }> {}

interface ConfigFile {
  readonly auths?: Record<
    string,
    { auth?: string; username?: string; password?: string; identitytoken?: string }
  >
  readonly credHelpers?: Record<string, string>
  readonly credsStore?: string
}

const hubAliases = new Set([
  "docker.io",
  "index.docker.io",
  "registry-1.docker.io",
  "registry.hub.docker.com"
])

/** `https://index.docker.io/v1/` and `docker.io` both name Docker Hub; keys may carry a scheme and a path. */
export const normalizeAuthKey = (key: string): string => {
  const host = key.replace(/^[a-z]+:\/\//, "").split("/")[0]!
  return hubAliases.has(host) ? "docker.io" : host
}

const readConfig = (path: string): ConfigFile | undefined => {
  let text: string
  try {
    text = NodeFs.readFileSync(path, "utf8")
  } catch {
    return undefined
  }
  try {
    return JSON.parse(text) as ConfigFile
  } catch (cause) {
    throw new CredentialError({ message: `${path} is not valid JSON: ${String(cause)}` })
  }
}

const fromAuths = (config: ConfigFile, registry: string, source: string): Credential | undefined => {
  for (const [key, entry] of Object.entries(config.auths ?? {})) {
    if (normalizeAuthKey(key) !== registry) continue
    if (entry.auth !== undefined && entry.auth.length > 0) {
      const decoded = Buffer.from(entry.auth, "base64").toString("utf8")
      const colon = decoded.indexOf(":")
      if (colon < 0) {
        throw new CredentialError({ message: `${source}: the auth entry for ${key} is not user:password` })
      }
      return {
        username: decoded.slice(0, colon),
        password: decoded.slice(colon + 1),
        identityToken: entry.identitytoken,
        source
      }
    }
    if (entry.username !== undefined) {
      return {
        username: entry.username,
        password: entry.password ?? "",
        identityToken: entry.identitytoken,
        source
      }
    }
    if (entry.identitytoken !== undefined) {
      return { username: "<token>", password: "", identityToken: entry.identitytoken, source }
    }
  }
  return undefined
}

/** Runs `docker-credential-<helper> get` with the server URL on stdin. */
const fromHelper = (helper: string, registry: string): Credential | undefined => {
  const server = registry === "docker.io" ? "https://index.docker.io/v1/" : registry
  const result = NodeChild.spawnSync(`docker-credential-${helper}`, ["get"], {
    input: server,
    encoding: "utf8",
    timeout: 30_000
  })
  if (result.error !== undefined) {
    throw new CredentialError({
      message: `credential helper docker-credential-${helper} could not be run: ${result.error.message}`
    })
  }
  if (result.status !== 0) {
    // Helpers exit non-zero with "credentials not found" for unknown servers: anonymous then.
    if (/not found/i.test(`${result.stdout}${result.stderr}`)) return undefined
    throw new CredentialError({
      message: `docker-credential-${helper} get failed: ${(result.stderr || result.stdout).trim()}`
    })
  }
  const parsed = JSON.parse(result.stdout) as { Username?: string; Secret?: string }
  if (parsed.Username === undefined || parsed.Secret === undefined) return undefined
  return parsed.Username === "<token>"
    ? {
      username: "<token>",
      password: "",
      identityToken: parsed.Secret,
      source: `docker-credential-${helper}`
    }
    : { username: parsed.Username, password: parsed.Secret, source: `docker-credential-${helper}` }
}

export interface CredentialSources {
  readonly authFile?: string | undefined
  readonly homeAuthFile?: string | undefined
  readonly dockerConfig?: string | undefined
}

export const defaultCredentialSources = (homeRoot?: string): CredentialSources => ({
  authFile: process.env.REGISTRY_AUTH_FILE,
  homeAuthFile: homeRoot !== undefined ? NodePath.join(homeRoot, "auth.json") : undefined,
  dockerConfig: NodePath.join(
    process.env.DOCKER_CONFIG ?? NodePath.join(NodeOs.homedir(), ".docker"),
    "config.json"
  )
})

/** The credential for a registry (normalized host[:port]), or undefined for anonymous access. */
export const lookupCredential = (
  registry: string,
  sources: CredentialSources
): Effect.Effect<Credential | undefined, CredentialError> =>
  Effect.try({
    try: () => {
      const key = normalizeAuthKey(registry)
      for (const file of [sources.authFile, sources.homeAuthFile]) {
        if (file === undefined) continue
        const config = readConfig(file)
        const found = config && fromAuths(config, key, file)
        if (found) return found
      }
      if (sources.dockerConfig !== undefined) {
        const config = readConfig(sources.dockerConfig)
        if (config !== undefined) {
          const helper = Object.entries(config.credHelpers ?? {}).find(([k]) => normalizeAuthKey(k) === key)
            ?.[1]
          if (helper !== undefined) return fromHelper(helper, key)
          const found = fromAuths(config, key, sources.dockerConfig)
          if (found) return found
          if (config.credsStore !== undefined && config.credsStore.length > 0) {
            return fromHelper(config.credsStore, key)
          }
        }
      }
      return undefined
    },
    catch: (cause) =>
      cause instanceof CredentialError ? cause : new CredentialError({ message: String(cause) })
  })

/**
 * Runs a CommonJS bundle with V8's code cache: the full CLI (bin/microagent-main.cjs) and the runtime
 * (bin/microagent-runtime.cjs). Compiling the CLI's 5 MB was a third of every command's CPU time
 * (~0.3 s of ~0.9 s here), paid again by every call of a script or a test, and the runtime paid the
 * same at each start. The first run of a build compiles as usual and, as it exits, saves what V8
 * compiled; later runs hand that back to V8, which checks it against its own version and flags and the
 * source's length, and compiles afresh if it does not match (the cache is then saved again). The
 * cache's name carries the bundle's digest, so a cache never meets another build's source.
 *
 * The cache is code: it lives in the user's own cache directory (`$XDG_CACHE_HOME/microagent`, else
 * `~/.cache/microagent`, made 0700), and a file is used only when it belongs to the user and no one
 * else may write it or its directory. Without a usable directory, or with `MICROAGENT_CODE_CACHE=0`,
 * the bundle is compiled every time. Node 20 has no code cache for ES modules, hence CommonJS bundles
 * run as scripts.
 *
 * Imports nothing but node built-ins: this file is bundled into the first stages.
 */
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import { createRequire } from "node:module"
import * as NodePath from "node:path"
import { pathToFileURL } from "node:url"
import { Script } from "node:vm"
import { trusted, userCacheDirectory } from "../host/UserCache.ts"

declare global {
  /** The bundle's own URL, which its `import.meta.url` reads (scripts/build.mjs defines it so). */
  var __microagentMainUrl: string | undefined
}

/** The private cache directory, created if missing; undefined when there is none to trust. */
const cacheDirectory = (): string | undefined =>
  process.env.MICROAGENT_CODE_CACHE === "0" ? undefined : userCacheDirectory()

const digest = (text: string) => NodeCrypto.createHash("sha256").update(text).digest("hex").slice(0, 16)

/**
 * The cache file of this build of the bundle and of this node: one per bundle path
 * (`<bundle>-<path digest>-*`); its name changes with the build (the digest of the bundle's content,
 * which the build writes on its first line) and with node's version and flags (the runtime runs with
 * flags of its own). V8's own check compares only the source's length, so a cache must never outlive
 * the build it was made from; a bundle without the line gets no cache.
 */
const cacheFile = (dir: string, file: string, source: string) => {
  const build = /^\/\/ microagent-build ([0-9a-f]{64})\n/.exec(source.slice(0, 100))?.[1]
  if (build === undefined) return undefined
  const prefix = `${NodePath.basename(file, ".cjs")}-${digest(file)}-`
  const key = [build, process.version, process.arch, ...process.execArgv].join("|")
  return { prefix, path: NodePath.join(dir, `${prefix}${digest(key)}.v8`) }
}

const readCache = (path: string): Buffer | undefined => {
  try {
    const fd = NodeFs.openSync(path, NodeFs.constants.O_RDONLY | NodeFs.constants.O_NOFOLLOW)
    try {
      return trusted(NodeFs.fstatSync(fd)) ? NodeFs.readFileSync(fd) : undefined
    } finally {
      NodeFs.closeSync(fd)
    }
  } catch {
    return undefined
  }
}

/** Writes the cache under a temporary name and renames it into place; older caches of the bundle go. */
const writeCache = (
  dir: string,
  target: { readonly prefix: string; readonly path: string },
  data: Buffer
) => {
  try {
    const temporary = `${target.path}.${process.pid}.tmp`
    NodeFs.writeFileSync(temporary, data, { mode: 0o600, flag: "wx" })
    NodeFs.renameSync(temporary, target.path)
    for (const name of NodeFs.readdirSync(dir)) {
      const path = NodePath.join(dir, name)
      const stale = name.endsWith(".tmp") ? Date.now() - NodeFs.statSync(path).mtimeMs > 3_600_000 : true
      if (name.startsWith(target.prefix) && path !== target.path && stale) {
        NodeFs.rmSync(path, { force: true })
      }
    }
  } catch {
    // A cache is an optimisation: a full disk or a race with another CLI costs the next run a compile.
  }
}

/** Runs the CommonJS bundle `file` as node would, with the code cache when one can be used. */
export const runBundle = (file: string): void => {
  // The build writes the bundle in ASCII (scripts/build.mjs), so Latin-1 reads it exactly, as a copy.
  const source = NodeFs.readFileSync(file, "latin1")
  const dir = cacheDirectory()
  const target = dir === undefined ? undefined : cacheFile(dir, file, source)
  const cachedData = target === undefined ? undefined : readCache(target.path)
  // The wrapper keeps the bundle's first line on line 1, so stack traces name the bundle's own lines.
  const script = new Script(`(function (exports, require, module, __filename, __dirname) {${source}\n})`, {
    filename: file,
    ...(cachedData === undefined ? {} : { cachedData })
  })
  if (dir !== undefined && target !== undefined && (cachedData === undefined || script.cachedDataRejected)) {
    // At exit the cache holds what this run compiled: the start-up and the command's own functions.
    process.once("exit", () => writeCache(dir, target, script.createCachedData()))
  }
  globalThis.__microagentMainUrl = pathToFileURL(file).href
  const module = { exports: {} }
  const wrapper = script.runInThisContext() as (...args: ReadonlyArray<unknown>) => void
  wrapper.call(module.exports, module.exports, createRequire(file), module, file, NodePath.dirname(file))
}

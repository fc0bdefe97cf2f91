// Bundles the CLI: bin/microagent.mjs (a tiny first stage) and bin/microagent-main.cjs (the CLI), and
// bin/microagent-runtime.mjs with bin/microagent-runtime.cjs, the runtime process alone (it loads
// neither the CLI nor the MCP server), bin/microagent-model-runner.mjs, the embedded model runner, and
// bin/microagent-model-bridge.mjs, bin/microagent-broker.mjs and bin/microagent-mitm.mjs.
import { build } from "esbuild"
import { execFileSync } from "node:child_process"
import { createHash } from "node:crypto"
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync
} from "node:fs"
import { dirname } from "node:path"

const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"))

/**
 * The version stamped into the bundles: the release, and for a build from a git checkout
 * `RELEASE+COMMITS.SHA.YYYYMMDD[.dirty]` (commit count, short hash and commit date of HEAD), so two
 * builds of different code never print the same version.
 */
const buildVersion = () => {
  const git = (...args) =>
    execFileSync("git", args, {
      cwd: new URL("..", import.meta.url),
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"]
    })
      .trim()
  try {
    const commits = git("rev-list", "--count", "HEAD")
    const sha = git("rev-parse", "--short=12", "HEAD")
    const date = git("log", "-1", "--format=%cd", "--date=format:%Y%m%d")
    const dirty = git("status", "--porcelain", "--untracked-files=no").length > 0 ? ".dirty" : ""
    return `${pkg.version}+${commits}.${sha}.${date}${dirty}`
  } catch {
    return pkg.version
  }
}

const common = {
  bundle: true,
  platform: "node",
  target: "node20",
  format: "esm",
  legalComments: "none",
  define: { "process.env.MICROAGENT_BUILD_VERSION": JSON.stringify(buildVersion()) },
  logLevel: "warning"
}

const withSqlite = {
  // better-sqlite3 is a native addon: resolved from node_modules at run time.
  external: ["better-sqlite3"],
  banner: {
    js: [
      "import { createRequire as __microagentRequire } from 'node:module';",
      "const require = __microagentRequire(import.meta.url);"
    ].join("\n")
  }
}

/**
 * Builds and writes the outputs in place. CLI processes may be starting while this runs (a test packs
 * the package mid-run, which builds again): each file is written under a temporary name and renamed
 * into place; `mode` is set before the rename. `transform` may rewrite a file's bytes first.
 */
const emit = async (options, mode = 0o644, transform = (contents) => contents) => {
  const result = await build({ ...common, ...options, write: false })
  for (const file of result.outputFiles) {
    mkdirSync(dirname(file.path), { recursive: true })
    const temporary = `${file.path}.${process.pid}.tmp`
    writeFileSync(temporary, transform(file.contents), { mode })
    chmodSync(temporary, mode)
    renameSync(temporary, file.path)
  }
}

/**
 * A bundle for the code cache (src/layers/process/CodeCache.ts):
 * - in ASCII, so the first stage can read it as Latin-1 (a copy) instead of decoding 5 MB of UTF-8 on
 *   every start: esbuild escapes strings (`charset`) but leaves comments and regular expressions as
 *   written, and each character left is written as the `\uXXXX` escape that means the same in a
 *   string, a regular expression, a template or an identifier (and is inert in a comment);
 * - with the digest of its content on its first line (`// microagent-build HEX`), which names its cache.
 */
const forCodeCache = (contents) => {
  const text = Buffer.from(contents).toString("utf8")
  if (/\\[^\x00-\x7f]/.test(text)) throw new Error("a bundle holds an escaped non-ASCII character")
  const escaped = text.replace(/[^\x00-\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`)
  const digest = createHash("sha256").update(escaped).digest("hex")
  return Buffer.from(`// microagent-build ${digest}\n${escaped}`, "latin1")
}

// The CLI: one CommonJS file, which the first stage runs as a script with V8's code cache
// (src/layers/process/CodeCache.ts); its `import.meta.url` is the URL the first stage gives it. Files of
// the earlier layout (an ES module and its chunks) are removed once they are an hour old: a CLI
// started on that build may still be loading them.
const cjs = {
  format: "cjs",
  charset: "ascii",
  external: ["better-sqlite3"],
  define: { ...common.define, "import.meta.url": "globalThis.__microagentMainUrl" }
}
await emit(
  { ...cjs, entryPoints: ["src/cli/bin.ts"], outfile: "bin/microagent-main.cjs" },
  0o644,
  forCodeCache
)
for (const path of ["bin/microagent-main.mjs", "bin/chunks"]) {
  if (existsSync(path) && Date.now() - statSync(path).mtimeMs > 3_600_000) {
    rmSync(path, { recursive: true, force: true })
  }
}

// The runtime process alone, the same way: a first stage (bin/microagent-runtime.mjs, what the
// launcher starts) runs bin/microagent-runtime.cjs with the code cache.
await emit(
  { ...cjs, entryPoints: ["src/runtime/bin.ts"], outfile: "bin/microagent-runtime.cjs" },
  0o644,
  forCodeCache
)
await emit({ entryPoints: ["src/runtime/entry.ts"], outfile: "bin/microagent-runtime.mjs" })

// The embedded model runner's process: node-llama-cpp (native binaries) resolved at run time.
await emit({
  entryPoints: ["src/runner/bin.ts"],
  outfile: "bin/microagent-model-runner.mjs",
  external: ["node-llama-cpp"]
})

// A paired workspace's model bridge (one detached process per running workspace).
await emit({ entryPoints: ["src/bridge/bin.ts"], outfile: "bin/microagent-model-bridge.mjs" })

// A workspace's credential broker (one detached process per running workspace with --broker).
await emit({
  banner: withSqlite.banner,
  entryPoints: ["src/bridge/brokerBin.ts"],
  outfile: "bin/microagent-broker.mjs"
})

// A mediated workspace's TLS interceptor under --egress mitm (one detached process per workspace).
await emit({
  banner: withSqlite.banner,
  entryPoints: ["src/bridge/mitmBin.ts"],
  outfile: "bin/microagent-mitm.mjs"
})

await emit({
  entryPoints: ["src/cli/entry.ts"],
  outfile: "bin/microagent.mjs",
  banner: { js: "#!/usr/bin/env node" }
}, 0o755)

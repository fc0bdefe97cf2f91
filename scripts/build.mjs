// Bundles the CLI: bin/microagent.mjs (a tiny first stage) and bin/microagent-main.mjs (the CLI), and
// bin/microagent-runtime.mjs, the runtime process alone (it loads neither the CLI nor the MCP server),
// bin/microagent-model-runner.mjs, the embedded model runner, and bin/microagent-model-bridge.mjs
// and bin/microagent-broker.mjs.
import { build } from "esbuild"
import { execFileSync } from "node:child_process"
import {
  chmodSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync
} from "node:fs"
import { basename, dirname, join, sep } from "node:path"

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
 * into place, chunks before the files that import them; `mode` is set before the rename.
 */
const emit = async (options, mode = 0o644) => {
  const result = await build({ ...common, ...options, write: false })
  const chunk = (file) => Number(file.path.includes(`${sep}chunks${sep}`))
  const outputs = [...result.outputFiles].sort((a, b) => chunk(b) - chunk(a))
  for (const file of outputs) {
    mkdirSync(dirname(file.path), { recursive: true })
    const temporary = `${file.path}.${process.pid}.tmp`
    writeFileSync(temporary, file.contents, { mode })
    chmodSync(temporary, mode)
    renameSync(temporary, file.path)
  }
  return outputs
}

// The CLI, split: what only a cluster needs (its modules, PostgreSQL's client) is a chunk of its own
// under bin/chunks/, loaded by the commands that use a cluster, so the others neither parse nor run it.
// A chunk this build did not make is removed once it is an hour old (a CLI started on the previous
// build may still import it).
const cli = await emit({
  ...withSqlite,
  entryPoints: { "microagent-main": "src/cli/bin.ts" },
  outdir: "bin",
  outExtension: { ".js": ".mjs" },
  splitting: true,
  chunkNames: "chunks/[name]-[hash]"
})
const made = new Set(cli.map((file) => basename(file.path)))
for (const name of readdirSync("bin/chunks")) {
  const path = join("bin/chunks", name)
  if (!made.has(name) && Date.now() - statSync(path).mtimeMs > 3_600_000) rmSync(path, { force: true })
}

await emit({ ...withSqlite, entryPoints: ["src/runtime/bin.ts"], outfile: "bin/microagent-runtime.mjs" })

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

await emit({
  entryPoints: ["src/cli/entry.ts"],
  outfile: "bin/microagent.mjs",
  external: ["./microagent-main.mjs"],
  banner: { js: "#!/usr/bin/env node" }
}, 0o755)

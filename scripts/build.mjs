// Bundles the CLI: bin/microagent.mjs (a tiny first stage) and bin/microagent-main.mjs (the CLI), and
// bin/microagent-runtime.mjs, the runtime process alone (it loads neither the CLI nor the MCP server).
import { build } from "esbuild"
import { chmodSync, readFileSync } from "node:fs"

const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"))

const common = {
  bundle: true,
  platform: "node",
  target: "node20",
  format: "esm",
  legalComments: "none",
  define: { "process.env.MICROAGENT_BUILD_VERSION": JSON.stringify(pkg.version) },
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

await build({ ...common, ...withSqlite, entryPoints: ["src/cli/bin.ts"], outfile: "bin/microagent-main.mjs" })
await build({
  ...common,
  ...withSqlite,
  entryPoints: ["src/runtime/bin.ts"],
  outfile: "bin/microagent-runtime.mjs"
})

await build({
  ...common,
  entryPoints: ["src/cli/entry.ts"],
  outfile: "bin/microagent.mjs",
  external: ["./microagent-main.mjs"],
  banner: { js: "#!/usr/bin/env node" }
})
chmodSync("bin/microagent.mjs", 0o755)

// Bundles the CLI into bin/microagent.mjs (one file, node builtins external).
import { build } from "esbuild"
import { readFileSync } from "node:fs"

const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"))

await build({
  entryPoints: ["src/cli/bin.ts"],
  outfile: "bin/microagent.mjs",
  bundle: true,
  platform: "node",
  target: "node20",
  format: "esm",
  minify: false,
  sourcemap: false,
  legalComments: "none",
  // better-sqlite3 is a native addon: resolved from node_modules at run time.
  external: ["better-sqlite3"],
  banner: {
    js: [
      "#!/usr/bin/env node",
      "import { createRequire as __microagentRequire } from 'node:module';",
      "const require = __microagentRequire(import.meta.url);"
    ].join("\n")
  },
  define: { "process.env.MICROAGENT_BUILD_VERSION": JSON.stringify(pkg.version) },
  logLevel: "warning"
})

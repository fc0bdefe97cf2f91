// `npm run bench`: bundles each bench/*.bench.ts, runs it, and prints one JSON object with every
// bench's figures (each bench measures its own baseline in the same run and reports the ratio).
import { build } from "esbuild"
import { execFileSync } from "node:child_process"
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs"
import { join } from "node:path"

const only = process.argv.slice(2)
const benches = readdirSync("bench").filter((f) => f.endsWith(".bench.ts"))
  .filter((f) => only.length === 0 || only.some((name) => f.startsWith(name)))
// Inside the checkout, so the bundles resolve node_modules.
mkdirSync(".cache", { recursive: true })
const out = mkdtempSync(join(".cache", "bench-"))
const results = {}
try {
  for (const file of benches) {
    const name = file.replace(/\.bench\.ts$/, "")
    const bundle = join(out, `${name}.mjs`)
    await build({
      entryPoints: [join("bench", file)],
      outfile: bundle,
      bundle: true,
      platform: "node",
      format: "esm",
      packages: "external",
      logLevel: "warning"
    })
    process.stderr.write(`bench: ${name}\n`)
    try {
      const stdout = execFileSync(process.execPath, [bundle], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "inherit"],
        maxBuffer: 64 << 20
      })
      results[name] = JSON.parse(stdout.trim().split("\n").at(-1))
    } catch (error) {
      results[name] = { error: String(error.message ?? error).split("\n")[0] }
    }
  }
} finally {
  rmSync(out, { recursive: true, force: true })
}
process.stdout.write(`${JSON.stringify(results, null, 2)}\n`)

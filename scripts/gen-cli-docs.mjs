// Regenerates the per-command reference blocks of docs/cli.md from the command tree (src/cli/CliReference.ts).
// `node scripts/gen-cli-docs.mjs --check` changes nothing and exits 1 when docs/cli.md is stale.
import { build } from "esbuild"
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { fileURLToPath, pathToFileURL } from "node:url"

const root = fileURLToPath(new URL("..", import.meta.url))
const docPath = `${root}docs/cli.md`
// Inside node_modules, so that the packages the command tree imports resolve from the repository.
const outDir = `${root}node_modules/.cache/microagent`
const outfile = `${outDir}/cli-reference-${process.pid}.mjs`

mkdirSync(outDir, { recursive: true })
await build({
  entryPoints: [`${root}src/cli/CliReference.ts`],
  outfile,
  bundle: true,
  platform: "node",
  target: "node20",
  format: "esm",
  packages: "external",
  logLevel: "warning"
})
try {
  const { updateReference } = await import(pathToFileURL(outfile).href)
  const current = readFileSync(docPath, "utf8")
  const next = updateReference(current)
  if (process.argv.includes("--check")) {
    if (next !== current) {
      process.stderr.write("docs/cli.md is stale: run `npm run docs:cli`\n")
      process.exitCode = 1
    }
  } else if (next !== current) {
    writeFileSync(docPath, next)
    process.stdout.write("docs/cli.md updated\n")
  } else {
    process.stdout.write("docs/cli.md is up to date\n")
  }
} finally {
  rmSync(outfile, { force: true })
}

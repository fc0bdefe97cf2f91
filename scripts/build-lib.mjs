// Compiles the library for the package: dist/ holds JavaScript, declarations and source maps of src/.
// The sources import each other as `./x.ts`; tsc rewrites those to `.js` in the JavaScript, and this
// script does the same in the declarations, so consumers resolve them whatever their settings.
import { execFileSync } from "node:child_process"
import { readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"

rmSync("dist", { recursive: true, force: true })
execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "tsconfig.build.json"], {
  stdio: "inherit"
})

const rewrite = (dir) => {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) rewrite(path)
    else if (entry.name.endsWith(".d.ts")) {
      const text = readFileSync(path, "utf8")
      const out = text.replace(/((?:from|import)\s*\(?\s*["'])(\.{1,2}\/[^"']+)\.ts(["'])/g, "$1$2.js$3")
      if (out !== text) writeFileSync(path, out)
    }
  }
}
rewrite("dist")

// The bundles get the version from esbuild's `define`; the compiled library from here.
const pkg = JSON.parse(readFileSync("package.json", "utf8"))
const versionModule = join("dist", "domain", "Version.js")
writeFileSync(
  versionModule,
  readFileSync(versionModule, "utf8").replace(
    "process.env.MICROAGENT_BUILD_VERSION",
    JSON.stringify(pkg.version)
  )
)

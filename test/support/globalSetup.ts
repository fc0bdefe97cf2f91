/** Builds the CLI bundle once per test run, so CLI tests exercise exactly what ships. */
import { execFileSync } from "node:child_process"

export default function setup() {
  execFileSync(process.execPath, ["scripts/build.mjs"], { stdio: "inherit" })
}

// Writes test/durations.json from the output of a full `npm test` (vitest's default reporter): each
// test file's wall time in seconds, which the test sequencer (test/support/sequencer.ts) uses to start
// the longest files first. Usage: npm test 2>&1 | tee test.log; node scripts/test-durations.mjs test.log
import { readFileSync, writeFileSync } from "node:fs"

const log = process.argv[2]
if (log === undefined) {
  process.stderr.write("usage: node scripts/test-durations.mjs LOG (the output of a full npm test)\n")
  process.exit(2)
}
// " ✓  real  test/e2e/crash.test.ts (35 tests) 463936ms", colours removed.
const line = /^\s*[✓❯×]\s+\S+\s+(test\/\S+\.test\.ts)\s+\(\d+ tests?[^)]*\)\s+(\d+(?:\.\d+)?)(ms|s)\s*$/
const durations = {}
for (const raw of readFileSync(log, "utf8").split("\n")) {
  const match = line.exec(raw.replace(/\u001b\[[0-9;]*m/g, ""))
  if (match === null) continue
  const seconds = Number(match[2]) / (match[3] === "ms" ? 1000 : 1)
  durations[match[1]] = Math.round(seconds * 10) / 10
}
const files = Object.keys(durations).sort()
if (files.length === 0) {
  process.stderr.write(`no test file timings in ${log}\n`)
  process.exit(1)
}
writeFileSync(
  "test/durations.json",
  `${JSON.stringify(Object.fromEntries(files.map((file) => [file, durations[file]])), null, 2)}\n`
)
process.stdout.write(`test/durations.json: ${files.length} files\n`)

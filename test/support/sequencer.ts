/**
 * The order the test files start in: longest first, from the wall times of an earlier full run
 * (test/durations.json, written by scripts/test-durations.mjs). With two lanes (vitest.config.ts) a
 * long real-VM file that starts last runs alone at the end; longest-first keeps both lanes busy until
 * the short files fill the tail. A file without a recorded time (a new one) starts first, as vitest's
 * own order does for files it has not timed.
 */
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { BaseSequencer, type TestSpecification } from "vitest/node"

const durationsFile = NodePath.join(import.meta.dirname, "..", "durations.json")

const recorded = (): Record<string, number> => {
  try {
    return JSON.parse(NodeFs.readFileSync(durationsFile, "utf8")) as Record<string, number>
  } catch {
    return {}
  }
}

export class LongestFirst extends BaseSequencer {
  override async sort(files: Array<TestSpecification>): Promise<Array<TestSpecification>> {
    const durations = recorded()
    const root = this.ctx.config.root
    const seconds = (spec: TestSpecification) =>
      durations[NodePath.relative(root, spec.moduleId).split(NodePath.sep).join("/")] ?? Infinity
    // A stable sort: files of equal (or no) record keep vitest's own order.
    const base = await super.sort(files)
    return [...base].sort((a, b) => {
      const [x, y] = [seconds(a), seconds(b)]
      return x === y ? 0 : x > y ? -1 : 1
    })
  }
}

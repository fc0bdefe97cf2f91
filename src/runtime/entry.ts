/**
 * The runtime process's first stage (bin/microagent-runtime.mjs, what the launcher starts): runs the
 * runtime's bundle, bin/microagent-runtime.cjs, with V8's code cache (src/layers/process/CodeCache.ts).
 */
import { fileURLToPath } from "node:url"
import { runBundle } from "../layers/process/CodeCache.ts"

runBundle(fileURLToPath(new URL("./microagent-runtime.cjs", import.meta.url)))

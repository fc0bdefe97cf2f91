/**
 * Restore benchmark. Prints one JSON object on stdout: `start --from-snapshot T` of a halted busybox
 * workspace from its memory snapshot, then its first exec, against a cold `start` of the same workspace
 * and its first exec, alternated in the same run (the runtime already up, as on a running host).
 * Ratio = restore+exec / cold start+exec (target from issue 14 for create --from-snapshot: <= 0.3).
 * Bundle with esbuild (`--bundle --platform=node --packages=external`) and run with node.
 */
import { cleanup, loadAverage, log, must, stateDir, summary } from "./lib.ts"

const rounds = 3
const image = "microagent.local/busybox:latest"

const main = async () => {
  const state = stateDir("restore")
  try {
    await must(state, ["create", "--image", image, "--egress", "off", "bench-restore"])
    await must(state, ["start", "bench-restore"])
    await must(state, ["exec", "bench-restore", "--", "true"])
    const snapshot = JSON.parse(
      (await must(state, ["snapshot", "create", "bench-restore", "--tag", "warm"])).stdout
    )
    const restore: Array<number> = []
    const cold: Array<number> = []
    for (let round = 0; round < rounds; round++) {
      await must(state, ["kill", "bench-restore"])
      log("restore", `round ${round}: cold start + exec`)
      const coldStart = await must(state, ["start", "bench-restore"])
      const coldExec = await must(state, ["exec", "bench-restore", "--", "true"])
      cold.push(coldStart.ms + coldExec.ms)
      await must(state, ["kill", "bench-restore"])
      log("restore", `round ${round}: start --from-snapshot + exec`)
      const restored = await must(state, ["start", "bench-restore", "--from-snapshot", "warm"])
      const restoredExec = await must(state, ["exec", "bench-restore", "--", "true"])
      restore.push(restored.ms + restoredExec.ms)
    }
    process.stdout.write(
      `${
        JSON.stringify({
          image,
          memoryMiB: snapshot.resources.memoryMiB,
          stateBytes: snapshot.stateBytes,
          snapshotAllocatedBytes: snapshot.allocatedBytes,
          restoreToExecMs: summary(restore),
          coldStartToExecMs: summary(cold),
          ratio: Number((summary(restore).median / summary(cold).median).toFixed(2)),
          target: 0.3,
          loadAverage: loadAverage()
        })
      }\n`
    )
  } finally {
    cleanup(state)
  }
}

await main()

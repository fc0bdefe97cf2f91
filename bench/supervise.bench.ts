/**
 * Supervise benchmark. Prints one JSON object on stdout: with `microagent supervise --interval 1`
 * running on an `on-failure` workspace, the time from killing its VMM (SIGKILL) to the workspace
 * answering `exec` again, against a cold `start` of the same workspace (halted) up to its answering
 * `exec`, in the same run. Ratio target: <= 1.2. Bundle with esbuild and run with node.
 */
import * as NodeChild from "node:child_process"
import { cleanup, cli, loadAverage, log, must, stateDir, stopRuntime, summary } from "./lib.ts"

const rounds = 3
const name = "bench-supervise"

/** Polls `exec true` until it answers; the time it answered. */
const untilExec = async (state: string) => {
  for (;;) {
    const result = await cli(state, ["exec", name, "--", "true"])
    if (result.code === 0) return performance.now()
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

const vmmPid = async (state: string): Promise<number> => {
  const inspected = await must(state, ["inspect", name, "--json"])
  return (JSON.parse(inspected.stdout) as { workspace: { vm: { pid: number } } }).workspace.vm.pid
}

const main = async () => {
  const state = stateDir("supervise")
  let supervisor: NodeChild.ChildProcess | undefined
  try {
    await must(state, ["create", "--restart", "on-failure", name])
    const cold: Array<number> = []
    for (let round = 0; round < rounds; round++) {
      log("supervise", `round ${round}: cold start`)
      const started = performance.now()
      await must(state, ["start", name])
      cold.push((await untilExec(state)) - started)
      await must(state, ["halt", name])
    }
    await must(state, ["start", name])
    await untilExec(state)
    supervisor = NodeChild.spawn(process.execPath, [
      process.env.MICROAGENT_REPO === undefined
        ? "bin/microagent.mjs"
        : `${process.env.MICROAGENT_REPO}/bin/microagent.mjs`,
      "supervise",
      name,
      "--interval",
      "1"
    ], {
      env: {
        ...process.env,
        MICROAGENT_HOME: state,
        MICROAGENT_BACKEND: "qemu",
        MICROAGENT_RUNTIME_IDLE_SECONDS: "120"
      },
      stdio: "ignore"
    })
    const restarted: Array<number> = []
    for (let round = 0; round < rounds; round++) {
      log("supervise", `round ${round}: kill the VMM`)
      const pid = await vmmPid(state)
      const killed = performance.now()
      process.kill(pid, "SIGKILL")
      restarted.push((await untilExec(state)) - killed)
    }
    const coldMedian = summary(cold).median
    const restartMedian = summary(restarted).median
    process.stdout.write(
      `${
        JSON.stringify({
          superviseRestartMs: summary(restarted),
          coldStartMs: summary(cold),
          ratio: Number((restartMedian / coldMedian).toFixed(2)),
          target: 1.2,
          interval: "1s",
          loadAverage: loadAverage()
        })
      }\n`
    )
  } finally {
    supervisor?.kill("SIGTERM")
    await cli(state, ["kill", name])
    stopRuntime(state)
    cleanup(state)
  }
}

await main()

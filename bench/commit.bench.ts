/**
 * Commit benchmark. Prints one JSON object on stdout: `microagent commit --push` of a workspace holding
 * a Debian bookworm minbase image (read off its ext4 disk, layered, recorded with a baseline, pushed to a
 * loopback registry), against `skopeo copy oci:LAYOUT docker://…` of the very same image (the committed
 * one, saved as an OCI layout) to a registry of the same kind, in the same run. Each skopeo copy goes to
 * a registry started empty for it: copied to the registry our push had just filled, skopeo found every
 * blob there (or mounted it across repositories) and sent nothing, which measured a manifest upload
 * rather than moving the image. Ratio target: <= 1.2.
 * Bundle with esbuild (`--bundle --platform=node --packages=external`) and run with node.
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { hostArchitecture, minbaseTarball, pushSpec } from "../test/support/images.ts"
import { startRegistry } from "../test/support/registry.ts"
import { cleanup, loadAverage, log, must, stateDir, summary } from "./lib.ts"

const rounds = 2

const main = async () => {
  const state = stateDir("commit")
  const registry = await startRegistry()
  try {
    const minbase = pushSpec(registry, state, "bench/minbase:latest", [{
      layers: [NodeFs.readFileSync(minbaseTarball())],
      architecture: hostArchitecture,
      config: { Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], Cmd: ["bash"] }
    }]).ref
    log("commit", "pulling the minbase image")
    await must(state, ["image", "pull", minbase])
    await must(state, ["create", "--image", minbase, "bench-commit"])
    // The runtime is started before the timed commits, as a running host would have it.
    await must(state, ["inspect", "bench-commit"])
    const ours: Array<number> = []
    const baseline: Array<number> = []
    let digest = ""
    let layerBytes = 0
    for (let round = 0; round < rounds; round++) {
      const target = `${registry.host}/bench/commit-${round}:1`
      log("commit", `round ${round}: commit --push`)
      const committed = await must(state, ["commit", "--push", "bench-commit", target])
      ours.push(committed.ms)
      const result = JSON.parse(committed.stdout) as { digest: string; layer: { size: number } }
      digest = result.digest
      layerBytes = result.layer.size

      const archive = NodePath.join(state, `saved-${round}.tar`)
      await must(state, ["image", "save", target, "-o", archive])
      const layout = NodePath.join(state, `layout-${round}`)
      NodeFs.mkdirSync(layout)
      NodeChild.execFileSync("tar", ["-xf", archive, "-C", layout])
      log("commit", `round ${round}: skopeo copy`)
      const empty = await startRegistry()
      try {
        const started = performance.now()
        NodeChild.execFileSync("skopeo", [
          "copy",
          "--quiet",
          "--dest-tls-verify=false",
          `oci:${layout}:${target}`,
          `docker://${empty.host}/bench/skopeo-${round}:1`
        ], { stdio: ["ignore", "pipe", "pipe"] })
        baseline.push(performance.now() - started)
      } finally {
        await empty.stop()
      }
    }
    const oursMedian = summary(ours).median
    const baselineMedian = summary(baseline).median
    process.stdout.write(
      `${
        JSON.stringify({
          image: "debian bookworm minbase",
          digest,
          layerBytes,
          commitPushMs: summary(ours),
          skopeoCopyMs: summary(baseline),
          ratio: Number((oursMedian / baselineMedian).toFixed(2)),
          target: 1.2,
          loadAverage: loadAverage()
        })
      }\n`
    )
  } finally {
    await registry.stop()
    cleanup(state)
  }
}

await main()

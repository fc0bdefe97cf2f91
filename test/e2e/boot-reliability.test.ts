/**
 * The fast boot options against hangs: consecutive boots with the default vCPU count and with one
 * vCPU (24 and 12 in the test suite, which must fit CI's time budget; 100 and 50 with
 * MICROAGENT_BOOT_RELIABILITY=full), each to agent-ready (the agent's answer to the handshake) within a bounded time.
 * A boot that does not answer in time is a failure carrying its console's tail. Boots go straight
 * through the qemu backend (no CLI, no runtime) and each VM is killed as soon as it answered, so the
 * whole file costs about what the boots themselves cost.
 *
 * With 2 vCPUs the fast profile had a rare stall (both vCPUs idle at the entry of
 * `sched_clock_idle_wakeup_event`, waiting for an interrupt that never comes: docs/kernels.md), when it
 * kept the TSC and tickless idle on more than one vCPU; it no longer does. One stalled boot in the run
 * is still tolerated and printed with its diagnosis, two fail the test (the backend boots a stalled
 * VM once more, so a user sees only the delay). One vCPU must never stall.
 */
import { afterAll, assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Layer } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { defaultResources } from "../../src/domain/Workspace.ts"
import { AgentChannel } from "../../src/layers/guest/AgentChannel.ts"
import { QemuHypervisor } from "../../src/layers/hypervisor/qemu/Qemu.ts"
import { Home } from "../../src/services/Home.ts"
import { Hypervisor, LaunchConfig } from "../../src/services/Hypervisor.ts"
import {
  agentBinary,
  cleanupTempDirs,
  makeRootfs,
  qemuProcessesMentioning,
  requireVmTools,
  sharedBootArtifacts,
  tempDir
} from "../support/kernel.ts"

requireVmTools()
const stateDir = tempDir("microagent-boot-reliability-")
const agentPath = agentBinary()
const pristine = makeRootfs(NodePath.join(stateDir, "pristine.ext4"))
// Generous: a normal boot takes a few seconds even on a loaded 2-core host; a hang never ends.
const bootTimeoutSeconds = 45

const hypervisorLayer = QemuHypervisor.layer({ bootProfile: "fast" }).pipe(
  Layer.provideMerge(AgentChannel.layer),
  Layer.provide(Home.layer(stateDir))
)

afterAll(() => {
  for (const pid of qemuProcessesMentioning(stateDir)) process.kill(pid, "SIGKILL")
  cleanupTempDirs()
})

interface Outcome {
  readonly boot: number
  readonly ms: number
  readonly error?: string
}

/** `count` boots in a row with `cpus` vCPUs; each on a fresh copy of the same small root filesystem. */
const bootMany = (label: string, count: number, cpus: number, allowedStalls: number) =>
  Effect.gen(function*() {
    const hypervisor = yield* Hypervisor
    const boot = yield* sharedBootArtifacts({ agentPath })
    const outcomes: Array<Outcome> = []
    for (let i = 1; i <= count; i++) {
      const name = `${label}-${i}`
      const rootfs = NodePath.join(stateDir, `${name}.ext4`)
      NodeChild.execFileSync("cp", ["--sparse=always", "--reflink=auto", pristine, rootfs])
      const started = Date.now()
      const launched = yield* Effect.exit(hypervisor.launch(
        new LaunchConfig({
          workspace: name,
          runtimeDir: NodePath.join(stateDir, "run", name),
          rootfsPath: rootfs,
          kernelPath: boot.kernelPath,
          initrdPath: boot.initrdPath,
          ...(boot.kernelHz === undefined ? {} : { kernelHz: boot.kernelHz }),
          memoryMiB: defaultResources.memoryMiB,
          cpus,
          hostname: name,
          network: "isolated",
          bootTimeoutSeconds,
          // Every stall is counted, not booted past.
          bootAttempts: 1
        })
      ))
      const ms = Date.now() - started
      if (Exit.isSuccess(launched)) {
        if (i === 1) {
          const cmdline = NodeFs.readFileSync(`/proc/${launched.value.pid}/cmdline`, "utf8")
          assert.include(cmdline, "mitigations=off", "the fast boot options are under test")
          assert.include(cmdline, "lpj=", "the kernel's CONFIG_HZ was found, so the delay loop is preset")
        }
        yield* hypervisor.kill(launched.value)
        outcomes.push({ boot: i, ms })
      } else {
        // The backend has killed the VM; its error carries the console's tail.
        const error = Exit.isFailure(launched) ? String(launched.cause) : ""
        outcomes.push({ boot: i, ms, error })
        console.log(`${label} boot ${i} failed after ${ms} ms:\n${error}`)
      }
      NodeFs.rmSync(rootfs, { force: true })
      NodeFs.rmSync(NodePath.join(stateDir, "run", name), { recursive: true, force: true })
      // Several failures in a row mean something else is broken: report rather than wait them all out.
      if (outcomes.filter((o) => o.error !== undefined).length >= 3) break
    }
    const good = outcomes.filter((o) => o.error === undefined).map((o) => o.ms).sort((a, b) => a - b)
    const slowest = outcomes.reduce((a, b) => (b.ms > a.ms ? b : a))
    console.log(
      `${label}: ${good.length}/${count} boots to agent-ready with ${cpus} vCPU(s); `
        + `median ${good[Math.floor(good.length / 2)]} ms, fastest ${good[0]} ms, `
        + `slowest boot ${slowest.boot} at ${slowest.ms} ms`
    )
    const failures = outcomes.filter((o) => o.error !== undefined)
    // A stall must be diagnosable: the boot timeout reports where each vCPU is.
    for (const o of failures) {
      assert.match(o.error!, /vCPU0 RIP=[0-9a-f]+/, `boot ${o.boot} says where it stalled`)
    }
    assert.isAtMost(
      failures.length,
      allowedStalls,
      `at most ${allowedStalls} stalled boot(s) in ${count}: ${
        failures.map((o) => `boot ${o.boot}: ${o.error}`).join("\n")
      }`
    )
    assert.strictEqual(good.length + failures.length, count)
    assert.deepStrictEqual(qemuProcessesMentioning(stateDir), [], "no VMM outlives its boot")
  }).pipe(Effect.provide(hypervisorLayer))

const full = process.env.MICROAGENT_BOOT_RELIABILITY === "full"
const smpBoots = full ? 100 : 24
const upBoots = full ? 50 : 12

describe("boot reliability", () => {
  it.live(
    `${smpBoots} consecutive boots with ${defaultResources.cpus} vCPUs reach agent-ready, but for at most one diagnosed stall`,
    () => bootMany("smp", smpBoots, defaultResources.cpus, 1),
    1_800_000
  )

  it.live(
    `${upBoots} consecutive boots with 1 vCPU reach agent-ready`,
    () => bootMany("up", upBoots, 1, 0),
    900_000
  )
})

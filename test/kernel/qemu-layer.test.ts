/**
 * The qemu backend's refusals and bookkeeping, without booting anything (the real boots are in
 * test/e2e/qemu.test.ts).
 */
import { afterAll, assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Layer } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import {
  type GuestControl,
  qemuCapabilities,
  QemuHypervisor,
  stallSign
} from "../../src/layers/hypervisor/qemu/Qemu.ts"
import { Home } from "../../src/services/Home.ts"
import { Hypervisor, LaunchConfig, PortForward, VmHandle } from "../../src/services/Hypervisor.ts"
import { cleanupTempDirs, requireTool, tempDir } from "../support/kernel.ts"

const state = tempDir("mq-")
const file = (name: string) => {
  const path = NodePath.join(state, name)
  NodeFs.writeFileSync(path, "x")
  return path
}
const [kernel, initrd, rootfs] = [file("vmlinux"), file("initrd"), file("root.ext4")]

const neverReady: GuestControl = { ready: () => Effect.never, shutdown: () => Effect.void }
const layer = (options: Parameters<typeof QemuHypervisor.layerWithGuestControl>[1] = {}) =>
  QemuHypervisor.layerWithGuestControl(neverReady, { accel: "tcg", ...options }).pipe(
    Layer.provide(Home.layer(state))
  )

const config = (overrides: Partial<ConstructorParameters<typeof LaunchConfig>[0]> = {}) =>
  new LaunchConfig({
    workspace: "w",
    runtimeDir: NodePath.join(state, "run", "w"),
    rootfsPath: rootfs,
    kernelPath: kernel,
    initrdPath: initrd,
    memoryMiB: 256,
    cpus: 1,
    hostname: "w",
    network: "isolated",
    bootTimeoutSeconds: 5,
    ...overrides
  })

const failure = <A, E>(exit: Exit.Exit<A, E>) => {
  assert.isTrue(Exit.isFailure(exit))
  return Exit.isFailure(exit) ? JSON.stringify(exit.cause) : ""
}

/** A handle naming a process that is certainly gone. */
const deadHandle = () =>
  new VmHandle({
    backend: "qemu",
    pid: 2 ** 22 - 7,
    pidStartTime: "1",
    channel: { _tag: "UnixSocket", path: NodePath.join(state, "run", "d", "agent.sock") },
    consoleLog: NodePath.join(state, "run", "d", "console.log"),
    controlSocket: NodePath.join(state, "run", "d", "qmp.sock")
  })

afterAll(cleanupTempDirs)

describe("qemu backend without booting", () => {
  it("tells a stalled boot by the kernel's own report on the console", () => {
    // The console of a stalled TCG boot (2 vCPUs, default profile) from a CI run.
    const stalled = "[    0.547258] PCI: Fatal: No config space access function found\r\n"
      + "[   28.417897] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [cryptomgr_test:49]\r\n"
    assert.strictEqual(stallSign(stalled), "BUG: soft lockup - CPU#1 stuck for 26s!")
    assert.strictEqual(
      stallSign("[   61.2] rcu: INFO: rcu_sched self-detected stall on CPU\n"),
      "rcu: INFO: rcu_sched self-detected stall on CPU"
    )
    assert.strictEqual(
      stallSign("[   61.2] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:\n"),
      "rcu: INFO: rcu_sched detected stalls on CPUs"
    )
    // A healthy boot's console, and one that merely mentions the words.
    assert.isUndefined(stallSign("[    0.547258] PCI: Fatal: No config space access function found\n"))
    assert.isUndefined(stallSign("echo soft lockup\n"))
  })

  it.live("declares its capabilities", () =>
    Effect.gen(function*() {
      const hypervisor = yield* Hypervisor
      assert.strictEqual(hypervisor.backend, "qemu")
      assert.strictEqual(hypervisor.capabilities, qemuCapabilities)
      for (
        const c of [
          "StructuredExec",
          "Console",
          "PauseResume",
          "NetworkPublish",
          "Volumes",
          "Snapshot"
        ] as const
      ) {
        assert.isTrue(hypervisor.capabilities.has(c), c)
      }
    }).pipe(Effect.provide(layer())))

  it.live("refuses bad launch configurations before starting anything", () =>
    Effect.gen(function*() {
      const hypervisor = yield* Hypervisor
      const ports = [new PortForward({ hostIp: "127.0.0.1", hostPort: 1, guestPort: 2, protocol: "tcp" })]
      const unsupported = failure(yield* Effect.exit(hypervisor.launch(config({ ports }))))
      assert.include(unsupported, "Unsupported")
      assert.include(unsupported, '"backend":"qemu"')
      assert.include(unsupported, "published ports without user networking")

      const { kernelPath: _, ...noKernel } = config()
      assert.include(failure(yield* Effect.exit(hypervisor.launch(new LaunchConfig(noKernel)))), "kernelPath")
      assert.include(
        failure(yield* Effect.exit(hypervisor.launch(config({ hostname: "a b" })))),
        "InvalidInput"
      )
      assert.include(
        failure(yield* Effect.exit(hypervisor.launch(config({ rootfsPath: NodePath.join(state, "none") })))),
        "NotFound"
      )
      const long = NodePath.join(state, "r".repeat(120))
      assert.include(failure(yield* Effect.exit(hypervisor.launch(config({ runtimeDir: long })))), "too long")
    }).pipe(Effect.provide(layer())))

  it.live("names the package when QEMU is missing, and leaves nothing behind", () =>
    Effect.gen(function*() {
      const hypervisor = yield* Hypervisor
      const text = failure(yield* Effect.exit(hypervisor.launch(config())))
      assert.include(text, "apt-get install qemu-system-x86")
      assert.deepStrictEqual(NodeFs.readdirSync(config().runtimeDir), [])
    }).pipe(Effect.provide(layer({ binary: "/nonexistent/qemu-system-x86_64" }))))

  it.live("reports QEMU's own refusal (a kernel that is not one)", () =>
    Effect.gen(function*() {
      requireTool("qemu-system-x86_64", "qemu-system-x86")
      const hypervisor = yield* Hypervisor
      const text = failure(yield* Effect.exit(hypervisor.launch(config())))
      assert.include(text, "QEMU refused to start")
      assert.deepStrictEqual(NodeFs.readdirSync(config().runtimeDir), [])
    }).pipe(Effect.provide(layer())))

  it.live("treats a gone VMM as exited: kill and halt are no-ops, attach is NotFound, pause a Conflict", () =>
    Effect.gen(function*() {
      const hypervisor = yield* Hypervisor
      const handle = deadHandle()
      assert.strictEqual(yield* hypervisor.inspect(handle), "exited")
      yield* hypervisor.kill(handle)
      yield* hypervisor.kill(handle)
      yield* hypervisor.halt(handle, 1)
      assert.include(failure(yield* Effect.exit(hypervisor.attach(handle))), "NotFound")
      assert.include(failure(yield* Effect.exit(hypervisor.pause(handle))), "Conflict")
      assert.include(failure(yield* Effect.exit(hypervisor.resume(handle))), "Conflict")
      const fake = new VmHandle({ ...handle, backend: "fake" })
      assert.include(failure(yield* Effect.exit(hypervisor.attach(fake))), "fake backend")
    }).pipe(Effect.provide(layer())))
})

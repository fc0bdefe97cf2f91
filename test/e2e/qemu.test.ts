/**
 * The qemu backend against real QEMU (TCG here) and the Debian cloud kernel, installed through the
 * KernelCache into a temporary state directory.
 */
import { afterAll, assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Layer, Schedule, Schema } from "effect"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodeHttp from "node:http"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { ExecRequest } from "../../src/domain/Exec.ts"
import { AgentChannel } from "../../src/layers/guest/AgentChannel.ts"
import {
  kvmDisqualifier,
  probeKvmBoot,
  readHostFacts
} from "../../src/layers/hypervisor/qemu/internal/accel.ts"
import { QemuHypervisor } from "../../src/layers/hypervisor/qemu/Qemu.ts"
import { isAlive } from "../../src/layers/process/Processes.ts"
import { GuestChannel } from "../../src/services/GuestChannel.ts"
import { Home } from "../../src/services/Home.ts"
import {
  DiskAttachment,
  Hypervisor,
  LaunchConfig,
  PortForward,
  VmHandle
} from "../../src/services/Hypervisor.ts"
import { type BootArtifacts, KernelCache } from "../../src/services/KernelCache.ts"
import { cliAsync } from "../support/cli.ts"
import {
  agentBinary,
  cleanupTempDirs,
  kernelCacheLayer,
  makeRootfs,
  requireVmTools,
  tempDir
} from "../support/kernel.ts"

requireVmTools()
const stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-qemu-e2e-"))
const agentPath = agentBinary()

const hypervisorLayer = (options: Parameters<typeof QemuHypervisor.layer>[0] = {}) =>
  QemuHypervisor.layer(options).pipe(
    Layer.provideMerge(AgentChannel.layer),
    Layer.provide(Home.layer(stateDir))
  )

let boot: BootArtifacts
let rootfs: string

const freePort = () =>
  new Promise<number>((resolve) => {
    const server = NodeHttp.createServer()
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as { port: number }).port
      server.close(() => resolve(port))
    })
  })

const config = (name: string, overrides: Partial<ConstructorParameters<typeof LaunchConfig>[0]> = {}) =>
  new LaunchConfig({
    workspace: name,
    runtimeDir: NodePath.join(stateDir, "run", name),
    rootfsPath: rootfs,
    kernelPath: boot.kernelPath,
    initrdPath: boot.initrdPath,
    memoryMiB: 256,
    cpus: 1,
    hostname: name,
    network: "isolated",
    bootTimeoutSeconds: 60,
    ...overrides
  })

const filesIn = (dir: string) => NodeFs.existsSync(dir) ? NodeFs.readdirSync(dir).sort() : []
const mode = (path: string) => NodeFs.statSync(path).mode & 0o777

/** Command lines of live QEMU processes that mention a runtime directory (read from /proc). */
const qemuProcessesFor = (runtimeDir: string) =>
  NodeFs.readdirSync("/proc").filter((pid) => /^[0-9]+$/.test(pid)).flatMap((pid) => {
    try {
      const cmdline = NodeFs.readFileSync(`/proc/${pid}/cmdline`, "utf8")
      return cmdline.includes("qemu-system") && cmdline.includes(runtimeDir) ? [cmdline] : []
    } catch {
      return []
    }
  })

afterAll(cleanupTempDirs)

describe("qemu backend", () => {
  afterAll(() => NodeFs.rmSync(stateDir, { recursive: true, force: true }))

  it.live("installs the Debian cloud kernel into a fresh state directory", () =>
    Effect.gen(function*() {
      const cache = yield* KernelCache
      const entry = yield* cache.install({})
      assert.strictEqual(entry.arch, "x86_64")
      assert.strictEqual(entry.format, "elf")
      assert.match(entry.source, /^debian:linux-image-[0-9].*-cloud-amd64=/)
      assert.includeMembers(entry.modules.map((m) => m.name), ["virtio_mmio", "virtio_blk", "virtio_console"])
      boot = yield* cache.ensure("x86_64")
      assert.strictEqual(boot.kernelSha256, entry.sha256)
      assert.strictEqual(mode(boot.kernelPath), 0o600)
      assert.strictEqual(mode(NodePath.join(stateDir, "kernels")), 0o700)
      rootfs = makeRootfs(NodePath.join(stateDir, "root.ext4"))
    }).pipe(Effect.provide(kernelCacheLayer(stateDir, agentPath))), 240_000)

  it.live(
    "boots, pauses, resumes and halts a microvm with user networking and an extra disk",
    () =>
      Effect.gen(function*() {
        const hypervisor = yield* Hypervisor
        const data = makeRootfs(NodePath.join(stateDir, "data.ext4"), { sizeMiB: 16 })
        const port = yield* Effect.promise(freePort)
        const cfg = config("full", {
          network: "user",
          ports: [new PortForward({ hostIp: "127.0.0.1", hostPort: port, guestPort: 80, protocol: "tcp" })],
          disks: [new DiskAttachment({ name: "data", path: data, mountpoint: "/data", readOnly: false })]
        })
        const handle = yield* hypervisor.launch(cfg)
        assert.isTrue(isAlive(handle.pid, handle.pidStartTime))
        for (const file of ["qmp.sock", "agent.sock", "console.log", "qemu.pid"]) {
          assert.strictEqual(mode(NodePath.join(cfg.runtimeDir, file)), 0o600, file)
        }
        assert.strictEqual(mode(cfg.runtimeDir), 0o700)
        const cmdline = NodeFs.readFileSync(`/proc/${handle.pid}/cmdline`, "utf8")
        assert.include(cmdline, "microagent.disks=vdb:/data:rw")
        assert.include(cmdline, `hostfwd=tcp:127.0.0.1:${port}-:80`)
        assert.strictEqual(yield* hypervisor.inspect(handle), "running")
        // The agent mounted the extra disk where the command line said.
        const channel = yield* GuestChannel
        const mounts = yield* Effect.scoped(
          Effect.flatMap(channel.connect(handle.channel), (c) =>
            c.exec(
              new ExecRequest({ argv: ["/bin/sh", "-c", "hostname; grep -E ' / | /data ' /proc/mounts"] })
            ))
        )
        assert.strictEqual(mounts.exitCode, 0, mounts.stderr)
        assert.match(mounts.stdout, /^full\n/)
        assert.match(mounts.stdout, /\/dev\/vdb \/data ext4 rw/)
        assert.match(mounts.stdout, /\/dev\/vda \/ ext4 rw/)
        // A published port reaches a server in the guest (slirp hostfwd + the agent's static address).
        const served = yield* Effect.scoped(
          Effect.flatMap(channel.connect(handle.channel), (c) =>
            c.exec(
              new ExecRequest({
                argv: [
                  "/bin/sh",
                  "-c",
                  "mkdir -p /tmp/www && echo hello-from-guest > /tmp/www/index.html && httpd -p 80 -h /tmp/www"
                ]
              })
            ))
        )
        assert.strictEqual(served.exitCode, 0, served.stderr)
        const body = yield* Effect.tryPromise(() =>
          fetch(`http://127.0.0.1:${port}/index.html`).then((r) => r.text())
        ).pipe(Effect.retry({ times: 20, schedule: Schedule.spaced("100 millis") }))
        assert.strictEqual(body, "hello-from-guest\n")
        yield* hypervisor.pause(handle)
        assert.strictEqual(yield* hypervisor.inspect(handle), "paused")
        yield* hypervisor.resume(handle)
        assert.strictEqual(yield* hypervisor.inspect(handle), "running")
        yield* hypervisor.halt(handle, 30)
        assert.isFalse(isAlive(handle.pid, handle.pidStartTime))
        assert.strictEqual(yield* hypervisor.inspect(handle), "exited")
        assert.deepStrictEqual(filesIn(cfg.runtimeDir), ["console.log"])
        // Halting a stopped VM is a no-op.
        yield* hypervisor.halt(handle, 5)
      }).pipe(Effect.provide(hypervisorLayer())),
    120_000
  )

  it.live(
    "re-attaches from a fresh layer using only the persisted handle, then kills",
    () =>
      Effect.gen(function*() {
        const cfg = config("reattach")
        const launched = yield* Effect.flatMap(Hypervisor, (h) => h.launch(cfg)).pipe(
          Effect.provide(hypervisorLayer())
        )
        const persisted = JSON.stringify(Schema.encodeSync(VmHandle)(launched))
        // A new layer instance, as a later process would build it.
        yield* Effect.gen(function*() {
          const hypervisor = yield* Hypervisor
          const handle = Schema.decodeSync(Schema.parseJson(VmHandle))(persisted)
          assert.deepStrictEqual(yield* hypervisor.attach(handle), handle)
          assert.strictEqual(yield* hypervisor.inspect(handle), "running")
          yield* hypervisor.kill(handle)
          assert.isFalse(isAlive(handle.pid, handle.pidStartTime))
          yield* hypervisor.kill(handle)
          const gone = yield* Effect.exit(hypervisor.attach(handle))
          assert.isTrue(Exit.isFailure(gone))
          if (Exit.isFailure(gone)) assert.include(JSON.stringify(gone.cause), "NotFound")
          const paused = yield* Effect.exit(hypervisor.pause(handle))
          assert.isTrue(Exit.isFailure(paused))
          // A recycled pid (same number, other start time) is never taken for ours.
          const impostor = new VmHandle({ ...handle, pid: process.pid, pidStartTime: "1" })
          assert.isTrue(Exit.isFailure(yield* Effect.exit(hypervisor.attach(impostor))))
        }).pipe(Effect.provide(hypervisorLayer()))
        assert.deepStrictEqual(filesIn(cfg.runtimeDir), ["console.log"])
      }),
    120_000
  )

  it.live(
    "a root that does not mount fails the launch and leaves nothing behind",
    () =>
      Effect.gen(function*() {
        const hypervisor = yield* Hypervisor
        const junk = NodePath.join(stateDir, "junk.img")
        NodeFs.writeFileSync(junk, Buffer.alloc(4 * 1024 * 1024))
        const cfg = config("badroot", { rootfsPath: junk, bootTimeoutSeconds: 30 })
        const exit = yield* Effect.exit(hypervisor.launch(cfg))
        assert.isTrue(Exit.isFailure(exit))
        if (Exit.isFailure(exit)) {
          const text = JSON.stringify(exit.cause)
          assert.include(text, "console tail")
        }
        assert.deepStrictEqual(filesIn(cfg.runtimeDir), [])
        assert.deepStrictEqual(qemuProcessesFor(cfg.runtimeDir), [])
      }).pipe(Effect.provide(hypervisorLayer())),
    120_000
  )

  it.live("a boot that overruns its timeout is killed and fails as Transient", () =>
    Effect.gen(function*() {
      const hypervisor = yield* Hypervisor
      const cfg = config("slow", { bootTimeoutSeconds: 0.4 })
      const exit = yield* Effect.exit(hypervisor.launch(cfg))
      assert.isTrue(Exit.isFailure(exit))
      if (Exit.isFailure(exit)) {
        const text = JSON.stringify(exit.cause)
        assert.include(text, "Transient")
        assert.include(text, "console tail")
        // A cold boot that does not answer in time is booted once more before it fails.
        assert.include(text, "booted twice, in vain")
        // Where the guest was when time ran out, to tell a hang from a slow boot.
        assert.match(text, /vCPU0 RIP=[0-9a-f]{16}/)
      }
      assert.deepStrictEqual(filesIn(cfg.runtimeDir), [])
      assert.deepStrictEqual(qemuProcessesFor(cfg.runtimeDir), [])
    }).pipe(Effect.provide(hypervisorLayer())), 120_000)

  it.live("boots on q35 with the q35 initramfs", () =>
    Effect.gen(function*() {
      const q35 = yield* Effect.flatMap(KernelCache, (cache) => cache.ensure("x86_64", { machine: "q35" }))
        .pipe(
          Effect.provide(kernelCacheLayer(stateDir, agentPath))
        )
      const hypervisor = yield* Hypervisor
      const handle = yield* hypervisor.launch(config("q35", { initrdPath: q35.initrdPath }))
      assert.strictEqual(yield* hypervisor.inspect(handle), "running")
      // Halting a paused VM resumes it so the agent can power off.
      yield* hypervisor.pause(handle)
      yield* hypervisor.halt(handle, 30)
      assert.isFalse(isAlive(handle.pid, handle.pidStartTime))
    }).pipe(Effect.provide(hypervisorLayer({ machine: "q35" }))), 120_000)

  // On a host whose KVM runs stock kernels there is nothing to rule out: the test is skipped, visibly.
  it.live.skipIf(kvmDisqualifier(readHostFacts()) === undefined)(
    "rules out this host's KVM for stock kernels",
    () =>
      Effect.gen(function*() {
        // The probe boot itself, bounded: a PVM-backed /dev/kvm never gets the stock kernel to panic in time.
        const verdict = yield* probeKvmBoot("qemu-system-x86_64", boot.kernelPath, stateDir, 3_000)
        assert.isFalse(verdict.kvm)
        const cached = JSON.parse(NodeFs.readFileSync(NodePath.join(stateDir, "qemu-host.json"), "utf8"))
        assert.isFalse(cached.kvm)
        assert.isAbove(cached.tscKhz, 100_000)
      }),
    60_000
  )

  it.live(
    "installs a kernel from a URL with its sha256 and refuses a wrong one",
    () =>
      Effect.gen(function*() {
        const body = NodeFs.readFileSync(boot.kernelPath)
        const server = NodeHttp.createServer((_, response) => {
          response.writeHead(200, { "content-type": "application/octet-stream" })
          response.end(body)
        })
        yield* Effect.async<void>((resume) => {
          server.listen(0, "127.0.0.1", () => resume(Effect.void))
        })
        const url = `http://127.0.0.1:${(server.address() as { port: number }).port}/vmlinux`
        const other = tempDir("microagent-url-")
        const result = yield* Effect.gen(function*() {
          const cache = yield* KernelCache
          const bad = yield* Effect.exit(cache.install({ url, sha256: "0".repeat(64) }))
          assert.isTrue(Exit.isFailure(bad))
          const entry = yield* cache.install({ url, sha256: boot.kernelSha256 })
          assert.strictEqual(entry.sha256, boot.kernelSha256)
          assert.match(entry.source, /^url:/)
          const verified = yield* cache.verify
          assert.isTrue(verified.length > 0 && verified.every((v) => v.ok))
          return entry
        }).pipe(
          Effect.provide(kernelCacheLayer(other, agentPath)),
          Effect.ensuring(Effect.sync(() => server.close()))
        )
        assert.strictEqual(result.version, boot.kernelVersion)
        NodeFs.rmSync(other, { recursive: true, force: true })
      }),
    60_000
  )
})

describe("the user's shared kernel store", () => {
  const cache = tempDir("microagent-kshare-cache-")
  const shared = NodePath.join(cache, "microagent", "kernels")
  /** A PATH holding node alone: a state directory that tried to fetch a kernel would find no apt-get. */
  const bare = tempDir("microagent-kshare-bin-")
  NodeFs.symlinkSync(process.execPath, NodePath.join(bare, "node"))
  const ensure = (env: Record<string, string> = {}) =>
    cliAsync(["kernel", "ensure"], {
      stateDir: tempDir("microagent-kshare-state-"),
      env: { XDG_CACHE_HOME: cache, ...env }
    })
  const sharedIndex = () =>
    JSON.parse(NodeFs.readFileSync(NodePath.join(shared, "index.json"), "utf8")) as {
      kernels: Array<{ sha256: string; source: string; modules: Array<{ path: string; sha256: string }> }>
      initramfs: Array<{ kernelSha256: string }>
    }
  let kernelSha256: string

  it("keeps the first distribution install, private, for the next state directory", async () => {
    const first = await ensure()
    assert.strictEqual(first.code, 0, first.stderr)
    kernelSha256 = JSON.parse(first.stdout).kernel_sha256
    const index = sharedIndex()
    assert.deepStrictEqual(index.kernels.map((k) => k.sha256), [kernelSha256])
    assert.match(index.kernels[0]!.source, /^debian:/)
    assert.deepStrictEqual(index.initramfs.map((i) => i.kernelSha256), [kernelSha256])
    for (const dir of [NodePath.dirname(shared), shared, NodePath.join(shared, "sha256")]) {
      assert.strictEqual(mode(dir), 0o700, dir)
    }
    for (const blob of NodeFs.readdirSync(NodePath.join(shared, "sha256"))) {
      assert.strictEqual(mode(NodePath.join(shared, "sha256", blob)), 0o600, blob)
    }
  }, 240_000)

  it("gives a new state directory the kernel without fetching it", async () => {
    const second = await ensure({ PATH: bare })
    assert.strictEqual(second.code, 0, second.stderr)
    assert.strictEqual(JSON.parse(second.stdout).kernel_sha256, kernelSha256)
  })

  it("refuses a damaged shared file, installs afresh and mends it; off turns sharing off", async () => {
    const module = sharedIndex().kernels[0]!.modules[0]!
    const bytes = NodeFs.readFileSync(module.path)
    bytes[bytes.length - 1] ^= 0xff
    NodeFs.writeFileSync(module.path, bytes)
    const without = await ensure({ PATH: bare })
    assert.notStrictEqual(without.code, 0, "a damaged shared kernel was used")
    assert.include(without.stderr + without.stdout, "apt")
    const mended = await ensure()
    assert.strictEqual(mended.code, 0, mended.stderr)
    const hash = NodeCrypto.createHash("sha256").update(NodeFs.readFileSync(module.path)).digest("hex")
    assert.strictEqual(hash, module.sha256)
    const off = await ensure({ PATH: bare, MICROAGENT_KERNEL_CACHE: "off" })
    assert.notStrictEqual(off.code, 0, "MICROAGENT_KERNEL_CACHE=off still imported")
  }, 240_000)
})

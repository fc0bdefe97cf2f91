import { afterAll, assert, describe, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { KernelCache } from "../../src/services/KernelCache.ts"
import {
  cleanupTempDirs,
  debianKernelTree,
  kernelCacheLayer,
  requireTool,
  sharedBootArtifacts,
  tempDir
} from "../support/kernel.ts"
import { fakeVmlinux } from "./fixtures.ts"

const temp = tempDir
const mode = (path: string) => NodeFs.statSync(path).mode & 0o777

const requireBusybox = () => {
  if (!NodeFs.existsSync("/bin/busybox")) {
    throw new Error("/bin/busybox is required: apt-get install busybox-static")
  }
}

/** The file names of an initramfs (plain cpio), via busybox. */
const cpioList = (path: string) => {
  requireBusybox()
  return NodeChild.execFileSync("/bin/busybox", ["cpio", "-t"], {
    input: NodeFs.readFileSync(path),
    stdio: "pipe"
  })
    .toString("utf8")
    .split("\n")
    .filter((l) => l.length > 0)
}

const cpioFile = (archive: string, name: string) => {
  const dir = temp("microagent-cpio-")
  NodeChild.execFileSync("/bin/busybox", ["cpio", "-i", "-d", name], {
    cwd: dir,
    input: NodeFs.readFileSync(archive),
    stdio: "pipe"
  })
  return NodeFs.readFileSync(NodePath.join(dir, name), "utf8")
}

afterAll(cleanupTempDirs)

describe("FileKernelCache", () => {
  const tree = debianKernelTree()

  it.effect("installs a kernel file with a modules directory and builds the initramfs per machine", () => {
    const state = temp("microagent-kcache-")
    const work = temp("microagent-kwork-")
    const vmlinux = NodePath.join(work, "vmlinux")
    NodeFs.writeFileSync(vmlinux, fakeVmlinux({ version: "6.1.0-test" }))
    const agent = NodePath.join(work, "agent")
    NodeFs.writeFileSync(agent, "#!agent v1\n")
    return Effect.gen(function*() {
      const cache = yield* KernelCache
      const entry = yield* cache.install({ path: vmlinux, modulesDir: tree.modulesDir })
      assert.strictEqual(entry.version, "6.1.0-test")
      assert.strictEqual(entry.format, "elf")
      assert.strictEqual(entry.source, `path:${vmlinux}`)
      assert.strictEqual(mode(entry.path), 0o600)
      assert.strictEqual(mode(NodePath.join(state, "kernels")), 0o700)
      assert.strictEqual(mode(NodePath.join(state, "kernels/index.json")), 0o600)
      assert.includeMembers(entry.modules.map((m) => m.name), [
        "virtio_mmio",
        "virtio_pci",
        "virtio_net",
        "failover"
      ])

      const microvm = yield* cache.ensure("x86_64")
      assert.strictEqual(microvm.kernelPath, entry.path)
      assert.strictEqual(microvm.kernelVersion, "6.1.0-test")
      const files = cpioList(microvm.initrdPath)
      assert.includeMembers(files, ["init", "dev", "proc", "sys", "newroot", "lib/modules/load.list"])
      const lines = cpioFile(microvm.initrdPath, "lib/modules/load.list").trim().split("\n")
      const order = lines.map((line) => line.split(" ")[0]!)
      assert.isBelow(order.indexOf("virtio_ring.ko"), order.indexOf("virtio_mmio.ko"))
      assert.isBelow(order.indexOf("virtio.ko"), order.indexOf("virtio_mmio.ko"))
      assert.isBelow(order.indexOf("net_failover.ko"), order.indexOf("virtio_net.ko"))
      assert.notInclude(order, "virtio_pci.ko")
      // The disk and channel drivers load on every boot, the NIC driver only when a NIC is configured.
      assert.include(lines, "virtio_blk.ko")
      assert.include(lines, "virtio_console.ko")
      assert.include(lines, "virtio_net.ko net")
      assert.isBelow(order.indexOf("virtio_console.ko"), order.indexOf("failover.ko"))
      for (const module of order) assert.include(files, `lib/modules/${module}`)
      assert.strictEqual(cpioFile(microvm.initrdPath, "init"), "#!agent v1\n")

      // Cached: the same initramfs comes back.
      assert.strictEqual((yield* cache.ensure("x86_64")).initrdSha256, microvm.initrdSha256)
      const q35 = yield* cache.ensure("x86_64", { machine: "q35" })
      assert.notStrictEqual(q35.initrdSha256, microvm.initrdSha256)
      assert.include(cpioFile(q35.initrdPath, "lib/modules/load.list"), "virtio_pci.ko\n")

      // A new agent gives a new initramfs.
      NodeFs.writeFileSync(agent, "#!agent v2\n")
      const rebuilt = yield* cache.ensure("x86_64")
      assert.notStrictEqual(rebuilt.initrdSha256, microvm.initrdSha256)
      assert.strictEqual(cpioFile(rebuilt.initrdPath, "init"), "#!agent v2\n")

      assert.deepStrictEqual((yield* cache.list).map((k) => k.sha256), [entry.sha256])
      const verified = yield* cache.verify
      assert.isTrue(verified.length > entry.modules.length && verified.every((v) => v.ok))

      // Tampering is detected.
      NodeFs.appendFileSync(rebuilt.initrdPath, "x")
      const after = yield* cache.verify
      const bad = after.filter((v) => !v.ok)
      assert.deepStrictEqual(bad.map((v) => v.path), [rebuilt.initrdPath])
      assert.strictEqual(bad[0]!.expected, rebuilt.initrdSha256)
    }).pipe(Effect.provide(kernelCacheLayer(state, agent)))
  }, 60_000)

  it.effect(
    "stores compressed modules (.ko.xz, .ko.zst) uncompressed, leaving the source directory alone",
    () => {
      requireTool("xz", "xz-utils")
      requireTool("zstd", "zstd")
      const state = temp("microagent-kcache-")
      const work = temp("microagent-kwork-")
      const modulesDir = NodePath.join(work, "modules")
      const originals = new Map<string, Buffer>()
      let index = 0
      const walk = (dir: string) => {
        for (const entry of NodeFs.readdirSync(dir, { withFileTypes: true })) {
          const path = NodePath.join(dir, entry.name)
          if (entry.isDirectory()) walk(path)
          else if (/^(virtio|failover|net_failover|vsock|vmw_vsock_virtio).*\.ko$/.test(entry.name)) {
            const bytes = NodeFs.readFileSync(path)
            originals.set(entry.name.replace(/\.ko$/, ""), bytes)
            const [tool, suffix] = index++ % 2 === 0 ? ["xz", ".xz"] : ["zstd", ".zst"]
            const target = NodePath.join(modulesDir, NodePath.relative(tree.modulesDir, path)) + suffix
            NodeFs.mkdirSync(NodePath.dirname(target), { recursive: true })
            NodeFs.writeFileSync(target, NodeChild.execFileSync(tool!, ["-c", "-q"], { input: bytes }))
          }
        }
      }
      walk(tree.modulesDir)
      const before = NodeFs.readdirSync(modulesDir, { recursive: true }).length
      const vmlinux = NodePath.join(work, "vmlinux")
      NodeFs.writeFileSync(vmlinux, fakeVmlinux())
      const agent = NodePath.join(work, "agent")
      NodeFs.writeFileSync(agent, "agent")
      return Effect.gen(function*() {
        const cache = yield* KernelCache
        const entry = yield* cache.install({ path: vmlinux, modulesDir })
        assert.includeMembers(entry.modules.map((m) => m.name), ["virtio_mmio", "virtio_net", "virtio_pci"])
        for (const module of entry.modules) {
          assert.deepStrictEqual(NodeFs.readFileSync(module.path), originals.get(module.name), module.name)
        }
        assert.strictEqual(NodeFs.readdirSync(modulesDir, { recursive: true }).length, before)
      }).pipe(Effect.provide(kernelCacheLayer(state, agent)))
    },
    60_000
  )

  it.effect("boots bare kernels with an empty module list and refuses what is not a kernel", () => {
    const state = temp("microagent-kcache-")
    const work = temp("microagent-kwork-")
    const vmlinux = NodePath.join(work, "vmlinux")
    NodeFs.writeFileSync(vmlinux, fakeVmlinux())
    const junk = NodePath.join(work, "junk")
    NodeFs.writeFileSync(junk, "hello")
    const agent = NodePath.join(work, "agent")
    NodeFs.writeFileSync(agent, "agent")
    return Effect.gen(function*() {
      const cache = yield* KernelCache
      const entry = yield* cache.install({ path: vmlinux })
      assert.deepStrictEqual(entry.modules, [])
      const boot = yield* cache.ensure("x86_64")
      assert.strictEqual(cpioFile(boot.initrdPath, "lib/modules/load.list"), "")
      const refused = yield* Effect.exit(cache.install({ path: junk }))
      assert.isTrue(Exit.isFailure(refused))
      assert.include(JSON.stringify(refused), "not a kernel")
      const missing = yield* Effect.exit(cache.install({ path: NodePath.join(work, "nope") }))
      assert.include(JSON.stringify(missing), "NotFound")
      const badSum = yield* Effect.exit(cache.install({ url: "http://127.0.0.1:1/k", sha256: "abc" }))
      assert.include(JSON.stringify(badSum), "not a sha256")
      const wrongArch = yield* Effect.exit(cache.install({ path: vmlinux }, "aarch64"))
      assert.include(JSON.stringify(wrongArch), "not aarch64")
    }).pipe(Effect.provide(kernelCacheLayer(state, agent)))
  })

  it.effect("names the build step when the guest agent is missing", () => {
    const state = temp("microagent-kcache-")
    const work = temp("microagent-kwork-")
    const vmlinux = NodePath.join(work, "vmlinux")
    NodeFs.writeFileSync(vmlinux, fakeVmlinux())
    return Effect.gen(function*() {
      const cache = yield* KernelCache
      yield* cache.install({ path: vmlinux })
      const exit = yield* Effect.exit(cache.ensure("x86_64"))
      assert.isTrue(Exit.isFailure(exit))
      assert.include(JSON.stringify(exit), "make -C guest")
    }).pipe(Effect.provide(kernelCacheLayer(state, NodePath.join(work, "no-agent"))))
  })
})

describe("sharedBootArtifacts (for other real-VM tests)", () => {
  it.live(
    "installs the Debian kernel once into the machine-wide cache and builds the agent's initramfs",
    () =>
      Effect.gen(function*() {
        const first = yield* sharedBootArtifacts()
        const second = yield* sharedBootArtifacts()
        assert.deepStrictEqual(second, first)
        assert.strictEqual(first.kernelVersion, debianKernelTree().version)
        assert.include(cpioList(first.initrdPath), "lib/modules/virtio_mmio.ko")
      }),
    120_000
  )
})

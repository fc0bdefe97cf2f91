import { assert, describe, it } from "@effect/vitest"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { moduleDepends } from "../../src/layers/kernel/internal/elf.ts"
import {
  canonicalModuleName,
  type ModuleSource,
  optionalModules,
  requiredModules,
  resolveModuleClasses,
  resolveModules
} from "../../src/layers/kernel/internal/modules.ts"
import { debianKernelTree } from "../support/kernel.ts"

const graph = (
  deps: Record<string, ReadonlyArray<string>>,
  builtin: ReadonlyArray<string> = []
): ModuleSource => ({
  locate: (name) => name in deps ? `/m/${name}.ko` : undefined,
  builtin: new Set(builtin),
  depends: (path) => deps[NodePath.basename(path, ".ko")] ?? []
})

const names = (order: ReadonlyArray<{ name: string }>) => order.map((m) => m.name)

describe("module ordering", () => {
  it("puts every module after its dependencies, once, keeping request order otherwise", () => {
    const source = graph({ a: ["b", "c"], b: ["c"], c: [], d: ["c"] })
    assert.deepStrictEqual(names(resolveModules(source, ["a", "d"])), ["c", "b", "a", "d"])
  })

  it("skips built-in modules and treats '-' and '_' alike", () => {
    const source = graph({ virtio_net: ["net-failover", "virtio"], net_failover: ["failover"] }, [
      "virtio",
      "failover"
    ])
    assert.deepStrictEqual(names(resolveModules(source, ["virtio-net"])), ["net_failover", "virtio_net"])
  })

  it("fails on a missing required module or dependency, and on cycles; skips missing optional ones", () => {
    assert.throws(() => resolveModules(graph({}), ["virtio_blk"]), /has no module virtio_blk/)
    assert.throws(() => resolveModules(graph({ a: ["gone"] }), ["a"]), /a needs gone/)
    assert.throws(() => resolveModules(graph({ a: ["b"], b: ["a"] }), ["a"]), /cycle: a -> b -> a/)
    assert.deepStrictEqual(names(resolveModules(graph({ a: [], v: ["gone"] }), ["a"], ["missing", "v"])), [
      "a"
    ])
  })
})

describe("modules of the Debian cloud kernel", () => {
  const tree = debianKernelTree()
  const found = new Map<string, string>()
  const walk = (dir: string) => {
    for (const entry of NodeFs.readdirSync(dir, { withFileTypes: true })) {
      const path = NodePath.join(dir, entry.name)
      if (entry.isDirectory()) walk(path)
      else if (entry.name.endsWith(".ko")) found.set(canonicalModuleName(entry.name), path)
    }
  }
  walk(tree.modulesDir)
  const source: ModuleSource = {
    locate: (name) => found.get(name),
    builtin: new Set(),
    depends: (path) => moduleDepends(NodeFs.readFileSync(path)).map(canonicalModuleName)
  }

  it("reads depends= from .modinfo like a plain scan of the file does", () => {
    for (
      const name of ["virtio_net", "virtio_mmio", "virtio_blk", "vmw_vsock_virtio_transport", "virtio_pci"]
    ) {
      const bytes = NodeFs.readFileSync(found.get(name)!)
      // An independent check: the NUL-separated "depends=" string anywhere in the file.
      const raw = /\0depends=([^\0]*)\0/.exec(bytes.toString("latin1"))![1]!
      assert.deepStrictEqual(moduleDepends(bytes), raw.split(",").filter((s) => s.length > 0), name)
    }
    assert.deepStrictEqual(moduleDepends(NodeFs.readFileSync(found.get("virtio_ring")!)), [])
  })

  it("orders the microvm set with every dependency first", () => {
    const order = names(resolveModules(source, requiredModules("microvm"), optionalModules))
    const before = (a: string, b: string) =>
      assert.isBelow(order.indexOf(a), order.indexOf(b), `${a} before ${b}`)
    for (
      const name of [
        "virtio_mmio",
        "virtio_blk",
        "virtio_console",
        "virtio_net",
        "vmw_vsock_virtio_transport"
      ]
    ) {
      assert.include(order, name)
    }
    // Generic checks: which of these depends on which varies between kernel versions.
    for (const name of order) {
      for (const dependency of source.depends(found.get(name)!)) before(dependency, name)
    }
    before("virtio_ring", "virtio_mmio")
    before("virtio", "virtio_mmio")
    before("failover", "net_failover")
    before("net_failover", "virtio_net")
    before("vsock", "vmw_vsock_virtio_transport_common")
    before("vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport")
    assert.notInclude(order, "virtio_pci")
    assert.strictEqual(new Set(order).size, order.length)
  })

  it("loads the disk and channel drivers on every boot, the NIC and vsock ones only by class", () => {
    const order = resolveModuleClasses(source, "microvm")
    const classOf = new Map(order.map((m) => [m.name, m.loadClass]))
    for (const name of ["virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console"]) {
      assert.strictEqual(classOf.get(name), "boot", name)
    }
    for (const name of ["failover", "net_failover", "virtio_net"]) {
      assert.strictEqual(classOf.get(name), "net", name)
    }
    for (const name of ["vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"]) {
      assert.strictEqual(classOf.get(name), "vsock", name)
    }
    // Same modules as the unclassified order, each once, every dependency loaded no later than its user.
    assert.sameMembers(
      order.map((m) => m.name),
      names(resolveModules(source, requiredModules("microvm"), optionalModules))
    )
    const rank = { boot: 0, net: 1, vsock: 2 }
    order.forEach((m, i) => {
      for (const dependency of source.depends(found.get(m.name)!)) {
        const at = order.findIndex((d) => d.name === dependency)
        assert.isBelow(at, i, `${dependency} before ${m.name}`)
        assert.isAtMost(
          rank[order[at]!.loadClass],
          rank[m.loadClass],
          `${dependency} loads with or before ${m.name}`
        )
      }
    })
  })

  it("adds the PCI transport for q35", () => {
    const order = names(resolveModules(source, requiredModules("q35"), optionalModules))
    assert.include(order, "virtio_pci")
    assert.isBelow(order.indexOf("virtio_pci_modern_dev"), order.indexOf("virtio_pci"))
    assert.notInclude(order, "virtio_mmio")
  })
})

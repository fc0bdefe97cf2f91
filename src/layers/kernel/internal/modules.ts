/**
 * Choosing the kernel modules the guest needs and ordering them so each loads after its
 * dependencies. Debian's kernel package ships no modules.dep, so dependencies come from each
 * module's own `.modinfo` (`depends=`), read through the given callback.
 */

export type Machine = "microvm" | "q35"

/** Module names (canonical, with underscores) the guest agent needs, by machine. */
export const requiredModules = (machine: Machine): ReadonlyArray<string> => [
  ...(machine === "microvm" ? ["virtio_mmio"] : ["virtio_pci"]),
  "virtio_blk",
  "virtio_console",
  "virtio_net"
]

/** Loaded when the kernel has them; the guest works without. */
export const optionalModules: ReadonlyArray<string> = ["vmw_vsock_virtio_transport"]

/**
 * When the agent loads each group (see initramfs.ts): the root disk and the channel on every boot,
 * the NIC driver only when the boot configures a NIC, vsock only for a vsock channel.
 */
const moduleClasses = (machine: Machine): ReadonlyArray<{
  readonly loadClass: "boot" | "net" | "vsock"
  readonly required: ReadonlyArray<string>
  readonly optional: ReadonlyArray<string>
}> => [
  {
    loadClass: "boot",
    required: [...(machine === "microvm" ? ["virtio_mmio"] : ["virtio_pci"]), "virtio_blk", "virtio_console"],
    optional: []
  },
  { loadClass: "net", required: ["virtio_net"], optional: [] },
  { loadClass: "vsock", required: [], optional: optionalModules }
]

/**
 * The modules to load by class, dependencies first; a module shared with an earlier class is
 * loaded with that class (so `boot` never waits on anything of `net`).
 */
export const resolveModuleClasses = (source: ModuleSource, machine: Machine) => {
  const taken = new Set<string>()
  const order: Array<ResolvedModule & { readonly loadClass: "boot" | "net" | "vsock" }> = []
  for (const group of moduleClasses(machine)) {
    for (const m of resolveModules(source, group.required, group.optional)) {
      if (taken.has(m.name)) continue
      taken.add(m.name)
      order.push({ ...m, loadClass: group.loadClass })
    }
  }
  return order
}

/** Module names treat '-' and '_' alike; the canonical form uses '_'. */
export const canonicalModuleName = (name: string): string => name.replace(/\.ko$/, "").replace(/-/g, "_")

export interface ModuleSource {
  /** The module file by canonical name, if the kernel has it as a module. */
  readonly locate: (name: string) => string | undefined
  /** Names built into the kernel (modules.builtin); those need no loading. */
  readonly builtin: ReadonlySet<string>
  /** The `depends=` names of a module file. */
  readonly depends: (path: string) => ReadonlyArray<string>
}

export interface ResolvedModule {
  readonly name: string
  readonly path: string
}

/**
 * The modules to load, dependencies first. Required names that are neither modules nor built in
 * fail; optional ones are skipped. Ties keep the order in which names were asked for.
 */
export const resolveModules = (
  source: ModuleSource,
  required: ReadonlyArray<string>,
  optional: ReadonlyArray<string> = []
): ReadonlyArray<ResolvedModule> => {
  const order: Array<ResolvedModule> = []
  const done = new Set<string>()
  const visiting = new Set<string>()
  const visit = (raw: string, chain: ReadonlyArray<string>): void => {
    const name = canonicalModuleName(raw)
    if (done.has(name) || source.builtin.has(name)) return
    if (visiting.has(name)) throw new Error(`module dependency cycle: ${[...chain, name].join(" -> ")}`)
    const path = source.locate(name)
    if (path === undefined) {
      throw new Error(
        chain.length === 0
          ? `the kernel has no module ${name} and does not build it in`
          : `module ${chain[chain.length - 1]} needs ${name}, which the kernel does not have`
      )
    }
    visiting.add(name)
    try {
      for (const dependency of source.depends(path)) visit(dependency, [...chain, name])
    } finally {
      visiting.delete(name)
    }
    done.add(name)
    order.push({ name, path })
  }
  for (const name of required) visit(name, [])
  for (const name of optional) {
    try {
      visit(name, [])
    } catch {
      // Optional: a kernel without it (or without one of its dependencies) still runs the guest.
    }
  }
  return order
}

/**
 * The QEMU command line and the guest kernel command line for one VM. Pure: everything the VMM
 * needs is in the input, so the construction is tested without booting anything.
 */
import * as NodePath from "node:path"
import {
  type Addressing,
  guestResolvers,
  routeSpec,
  slirpNetwork,
  userNicMac
} from "../../../../domain/Addressing.ts"
import {
  brokerSocketOf,
  type DiskAttachment,
  diskDeviceName,
  guestDiskList,
  guestModelPort,
  type NicAttachment,
  type PortForward
} from "../../../../services/Hypervisor.ts"

export { diskDeviceName }

export type Machine = "microvm" | "q35"
export type Accel = "kvm" | "tcg"

/**
 * `fast`, the default (resolveBootProfile), adds kernel options that shorten the guest kernel's boot
 * and lets the agent skip drivers the boot does not use; `compat` (`MICROAGENT_BOOT_PROFILE=compat`)
 * is the earlier command line. docs/kernels.md says what each option gives up.
 */
export type BootProfile = "fast" | "compat"
export const bootProfiles: ReadonlyArray<BootProfile> = ["fast", "compat"]

/**
 * The `fast` profile's kernel options. Each one gives up something only inside the guest (the
 * host's protection comes from the VMM boundary, not from the guest kernel); see docs/kernels.md.
 */
export const fastBootOptions = (machine: Machine, cpus = 1): ReadonlyArray<string> => [
  // Speculative-execution mitigations protect guest processes from each other, never the host.
  "mitigations=off",
  // PVH boot already skips the decompressor's text randomisation; this also fixes the memory layout.
  "nokaslr",
  // One serial port (the console) instead of probing four.
  "8250.nr_uarts=1",
  // Skips the IO-APIC timer check, which waits for timer ticks.
  "no_timer_check",
  // The machine has no PS/2 controller: no PnP lookup, no AUX/MUX probing.
  "i8042.noaux",
  "i8042.nomux",
  "i8042.nopnp",
  "i8042.dumbkbd",
  // Crypto self-tests at boot (and the SP800-108 KDF's) check the kernel's own implementations.
  "cryptomgr.notests",
  "initcall_blacklist=crypto_kdf108_init,init_kprobe_trace",
  // No audit daemon runs in a workspace.
  "audit=0",
  // One vCPU: the clocksource watchdog would mark the TSC unstable when the emulated guest is
  // descheduled. Not with more: the guest then keeps jiffies and its periodic tick, as `compat` does,
  // because with the TSC, tickless idle lost a wake-up now and then (docs/kernels.md).
  ...(cpus === 1 ? ["tsc=reliable"] : []),
  // With one vCPU the kernel would rewrite every LOCK prefix in its text, slow under emulation.
  "noreplace-smp",
  // microvm has no PCI bus; q35 needs it.
  ...(machine === "microvm" ? ["pci=off"] : [])
]

/**
 * The `fast` profile's emulated CPU (TCG only; under KVM the guest gets the host's): QEMU's default
 * `qemu64` plus `arat` (the local APIC timer keeps running in deep idle). Without it the kernel takes
 * the APIC timer for one that stops in C3 and, microvm having no broadcast timer (no HPET), never leaves
 * periodic mode: 250 timer interrupts a second per vCPU, each one emulated, idle or not. With it a
 * guest on the TSC (one vCPU: `tsc=reliable`) runs tickless, and an idle one costs the host about a
 * fifth of the CPU time (docs/kernels.md). A guest of more vCPUs stays on jiffies and its periodic
 * tick either way. `compat` keeps QEMU's default CPU.
 */
export const tcgCpu = (profile: BootProfile | undefined): ReadonlyArray<string> =>
  (profile ?? "fast") === "fast" ? ["-cpu", "qemu64,+arat"] : []

/** The virtio-serial port name the agent looks for (`microagent.channel=virtio:<name>`). */
export const agentPortName = "microagent.agent"

/** Slirp's fixed addressing (`-netdev user` defaults). */
export const userNetwork = { ip: "10.0.2.15/24", gateway: "10.0.2.2", dns: "10.0.2.3" } as const

export interface RuntimePaths {
  readonly runtimeDir: string
  readonly qmpSocket: string
  readonly agentSocket: string
  readonly consoleLog: string
  readonly pidFile: string
  /** The model channel's socket (see modelPortName). */
  readonly modelSocket: string
}

export const runtimePaths = (runtimeDir: string): RuntimePaths => ({
  runtimeDir,
  qmpSocket: NodePath.join(runtimeDir, "qmp.sock"),
  agentSocket: NodePath.join(runtimeDir, "agent.sock"),
  consoleLog: NodePath.join(runtimeDir, "console.log"),
  pidFile: NodePath.join(runtimeDir, "qemu.pid"),
  modelSocket: NodePath.join(runtimeDir, "model.sock")
})

/** The virtio-serial port the guest's model forwarder uses, and the guest TCP port it serves. */
export const modelPortName = "microagent.model"
export { guestModelPort }

export interface QemuArgsInput {
  readonly workspace: string
  readonly machine: Machine
  readonly accel: Accel
  /** Host TSC frequency; passed under TCG on microvm, where the guest has no other clock to calibrate against. */
  readonly tscKhz: number | undefined
  readonly kernelPath: string
  readonly initrdPath: string
  readonly rootfsPath: string
  /** `qcow2` for an overlay made by the host over a raw base (`rootDiskOf`); default raw. */
  readonly rootfsFormat?: "raw" | "qcow2" | undefined
  readonly memoryMiB: number
  readonly cpus: number
  readonly hostname: string
  readonly network: "user" | "isolated"
  /** The guest's own addressing on the user network (absent: slirp's). */
  readonly addressing?: Addressing | undefined
  readonly ports: ReadonlyArray<PortForward>
  readonly disks: ReadonlyArray<DiskAttachment>
  readonly nics?: ReadonlyArray<NicAttachment>
  readonly paths: RuntimePaths
  readonly extraCmdline?: ReadonlyArray<string>
  /** Default `fast`. */
  readonly bootProfile?: BootProfile
  /** The guest kernel's CONFIG_HZ, when known. */
  readonly kernelHz?: number | undefined
  /** The user network through this tap (made by the egress mediation) instead of QEMU's NAT. */
  readonly egressTap?: string | undefined
  /** Wait for a migration stream (`migrate-incoming` over QMP) instead of booting: a restore. */
  readonly incoming?: boolean | undefined
  /** A model channel: guest 127.0.0.1:11434 forwarded over a second virtio-serial port. */
  readonly modelChannel?: boolean | undefined
  /** Broker endpoints: guest 127.0.0.1:PORT forwarded over virtio-serial port `microagent.broker.N`. */
  readonly brokerPorts?: ReadonlyArray<number> | undefined
  /** The channels attached without their `microagent.model`/`.brokers` (see LaunchConfig.channelsUnannounced). */
  readonly channelsUnannounced?: boolean | undefined
  /** The user network's NIC without a netdev behind it (see LaunchConfig.unpluggedNic). */
  readonly unpluggedNic?: boolean | undefined
  /** Where guest RAM lives (absent: QEMU's anonymous `pc.ram`, as states saved before `mem` existed). */
  readonly memory?: GuestMemory | undefined
}

/**
 * Guest RAM as a named backend `mem`: a shared memfd (booted VMs: a capture copies it out as a plain
 * file, and the migration stream then holds only device state); a saved memory file mapped privately
 * (restores: pages are read on first touch and copied on first write, so VMs restored from one file
 * share what they have not changed); or private anonymous memory (restores of a stream that holds the
 * RAM: pages the stream leaves zero stay unallocated, which a memfd would allocate).
 */
export type GuestMemory =
  | { readonly _tag: "Memfd" }
  | { readonly _tag: "MappedFile"; readonly path: string }
  | { readonly _tag: "Anonymous" }
  /** A private copy of a saved memory file on a tmpfs, shared like a memfd (removed once mapped). */
  | { readonly _tag: "SharedFile"; readonly path: string }

/** The backend's id, which is also the RAM block's name in a migration stream. */
export const guestMemoryId = "mem"

const memoryBackend = (memory: GuestMemory, memoryMiB: number): string =>
  memory._tag === "Memfd"
    ? `memory-backend-memfd,id=${guestMemoryId},size=${memoryMiB}M,share=on`
    : memory._tag === "Anonymous"
    ? `memory-backend-ram,id=${guestMemoryId},size=${memoryMiB}M`
    : memory._tag === "SharedFile"
    ? `memory-backend-file,id=${guestMemoryId},size=${memoryMiB}M,mem-path=${
      escapeOption(memory.path)
    },share=on`
    : `memory-backend-file,id=${guestMemoryId},size=${memoryMiB}M,mem-path=${
      escapeOption(memory.path)
    },share=off`

/**
 * The `fast` profile's options that depend on the VM. Under TCG: the delay-loop constant from the
 * TSC frequency (loops per jiffy = TSC Hz / CONFIG_HZ), which the kernel otherwise measures on every
 * CPU after the first, waiting on timer ticks (its own value for the first CPU is the same, taken
 * from the TSC).
 */
export const fastVmOptions = (input: QemuArgsInput): ReadonlyArray<string> =>
  input.accel === "tcg" && input.tscKhz !== undefined && input.kernelHz !== undefined && input.kernelHz > 0
    ? [`lpj=${Math.round((input.tscKhz * 1000) / input.kernelHz)}`]
    : []

/** Characters that would break the kernel command line or the agent's `name:path:mode` lists. */
export const cmdlineProblem = (what: string, value: string): string | undefined =>
  value.length === 0
    ? `${what} is empty`
    : /[\s,:"]/.test(value) || /[^\x21-\x7e]/.test(value)
    ? `${what} "${value}" contains a space, comma, colon, quote or non-ASCII character`
    : undefined

/** What would make a named-network NIC break QEMU's option syntax, the kernel command line or IFNAMSIZ. */
export const nicProblem = (nic: NicAttachment): string | undefined =>
  // A template's stand-in has neither tap nor address, only its MAC.
  nic.standIn !== true && !/^[A-Za-z0-9_-]{1,15}$/.test(nic.tap)
    ? `the tap name "${nic.tap}" is not 1-15 letters, digits, '_' or '-'`
    : !/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/.test(nic.mac)
    ? `the MAC "${nic.mac}" is not six lowercase hex pairs`
    : nic.standIn !== true && !/^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/.test(nic.address)
    ? `the address "${nic.address}" is not A.B.C.D/N`
    : undefined

/**
 * The guest's user-network addressing on its command line: its own (`addressing`) or slirp's. Under
 * egress mediation without its own resolvers the guest asks the mediator, which answers at the gateway
 * of a custom network (at slirp's 10.0.2.3 otherwise); with egress off, slirp's resolver of that net.
 */
const userNetworkCmdline = (input: QemuArgsInput): ReadonlyArray<string> => {
  const a = input.addressing
  if (a === undefined) {
    return [
      `microagent.ip=${userNetwork.ip}`,
      `microagent.gateway=${userNetwork.gateway}`,
      `microagent.dns=${userNetwork.dns}`
    ]
  }
  return [
    `microagent.ip=${a.ip}`,
    `microagent.gateway=${a.gateway}`,
    `microagent.dns=${guestResolvers(a, input.egressTap !== undefined).join(",")}`,
    ...(a.routes.length > 0 ? [`microagent.routes=${a.routes.map(routeSpec).join(",")}`] : [])
  ]
}

/** QEMU's user NAT serving a custom addressing's network: its net, the gateway and a resolver in it. */
const slirpAddressing = (a: Addressing | undefined) => {
  if (a === undefined) return ""
  const slirp = slirpNetwork(a)
  return `,net=${slirp.net},host=${slirp.host},dns=${slirp.resolver}`
}

export const kernelCmdline = (input: QemuArgsInput): string => {
  const words = [
    "console=ttyS0",
    "quiet",
    "panic=-1",
    ...(input.accel === "tcg" && input.tscKhz !== undefined ? [`tsc_early_khz=${input.tscKhz}`] : []),
    // compat: the agent loads every module of the initramfs, as it did before it learnt to skip some.
    ...((input.bootProfile ?? "fast") === "fast"
      ? [...fastBootOptions(input.machine, input.cpus), ...fastVmOptions(input)]
      : ["microagent.modules=all"]),
    "microagent.root=/dev/vda",
    `microagent.channel=virtio:${agentPortName}`,
    `microagent.hostname=${input.hostname}`,
    ...(input.network === "user" ? userNetworkCmdline(input) : []),
    ...(guestDiskList(input.disks) === undefined ? [] : [`microagent.disks=${guestDiskList(input.disks)}`]),
    // Named networks: the agent configures the NIC with this MAC (`microagent.net1=MAC,ADDRESS/N`).
    // A stand-in has no address: the agent loads the NIC driver and leaves the NIC down.
    ...(input.nics ?? []).map((nic, i) =>
      `microagent.net${i + 1}=${nic.mac}${nic.standIn === true ? "" : `,${nic.address}`}`
    ),
    ...(input.modelChannel === true && input.channelsUnannounced !== true
      ? [`microagent.model=${guestModelPort}`]
      : []),
    ...((input.brokerPorts ?? []).length > 0 && input.channelsUnannounced !== true
      ? [`microagent.brokers=${input.brokerPorts!.join(",")}`]
      : []),
    ...(input.extraCmdline ?? [])
  ]
  return words.join(" ")
}

/** QEMU's option syntax doubles commas inside values. */
const escapeOption = (value: string) => value.replace(/,/g, ",,")

export const qemuArgs = (input: QemuArgsInput): ReadonlyArray<string> => {
  const mmio = input.machine === "microvm"
  const device = (kind: "blk" | "serial" | "net") =>
    mmio
      ? { blk: "virtio-blk-device", serial: "virtio-serial-device", net: "virtio-net-device" }[kind]
      : { blk: "virtio-blk-pci", serial: "virtio-serial-pci", net: "virtio-net-pci" }[kind]
  const drives = [
    { id: "root", path: input.rootfsPath, readOnly: false, format: input.rootfsFormat ?? "raw" },
    ...input.disks.map((d, i) => ({ id: `disk${i + 1}`, path: d.path, readOnly: d.readOnly, format: "raw" }))
  ]
  // To the guest's own address where it has one: slirp's default is its first DHCP address (.15).
  const guestIp = input.addressing?.ip.split("/")[0] ?? ""
  const hostfwd = input.ports.map((p) =>
    `,hostfwd=${p.protocol}:${p.hostIp}:${p.hostPort}-${guestIp}:${p.guestPort}`
  )
    .join("")
  return [
    "-name",
    escapeOption(`microagent-${input.workspace}`),
    "-M",
    input.memory === undefined ? input.machine : `${input.machine},memory-backend=${guestMemoryId}`,
    ...(input.memory === undefined ? [] : ["-object", memoryBackend(input.memory, input.memoryMiB)]),
    ...(input.accel === "kvm"
      ? ["-accel", "kvm", "-cpu", "host"]
      : ["-accel", "tcg", ...tcgCpu(input.bootProfile)]),
    "-m",
    String(input.memoryMiB),
    "-smp",
    String(input.cpus),
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-no-reboot",
    "-kernel",
    input.kernelPath,
    "-initrd",
    input.initrdPath,
    "-append",
    kernelCmdline(input),
    // The serial console goes to a file so it outlives whoever started the VMM.
    "-chardev",
    // Appended to: a restore's log begins with the saved VM's (seeded before the VMM starts).
    `file,id=console,path=${escapeOption(input.paths.consoleLog)},append=on`,
    "-serial",
    "chardev:console",
    "-chardev",
    `socket,id=qmp,path=${escapeOption(input.paths.qmpSocket)},server=on,wait=off`,
    "-mon",
    "chardev=qmp,mode=control",
    ...drives.flatMap((d) => [
      "-drive",
      `id=${d.id},file=${escapeOption(d.path)},format=${d.format},if=none${d.readOnly ? ",readonly=on" : ""}`,
      "-device",
      `${device("blk")},drive=${d.id}`
    ]),
    "-device",
    device("serial"),
    "-chardev",
    `socket,id=agent,path=${escapeOption(input.paths.agentSocket)},server=on,wait=off`,
    "-device",
    `virtserialport,chardev=agent,name=${agentPortName}`,
    ...(input.modelChannel === true
      ? [
        "-chardev",
        `socket,id=model,path=${escapeOption(input.paths.modelSocket)},server=on,wait=off`,
        "-device",
        `virtserialport,chardev=model,name=${modelPortName}`
      ]
      : []),
    ...(input.brokerPorts ?? []).flatMap((_port, i) => [
      "-chardev",
      `socket,id=broker${i},path=${
        escapeOption(brokerSocketOf(input.paths.runtimeDir, i))
      },server=on,wait=off`,
      "-device",
      `virtserialport,chardev=broker${i},name=microagent.broker.${i}`
    ]),
    ...(input.network === "user" && input.unpluggedNic === true
      ? ["-device", device("net")]
      : input.network === "user" && input.egressTap !== undefined
      // Mediated: the same guest addressing, but the packets go to a tap in the workspace's namespace.
      ? [
        "-netdev",
        `tap,id=net0,ifname=${input.egressTap},script=no,downscript=no`,
        "-device",
        `${device("net")},netdev=net0,mac=${userNicMac(input.workspace)}`
      ]
      : input.network === "user"
      ? [
        "-netdev",
        `user,id=net0,restrict=off${slirpAddressing(input.addressing)}${hostfwd}`,
        "-device",
        `${device("net")},netdev=net0,mac=${userNicMac(input.workspace)}`
      ]
      : []),
    // Non-persistent taps (script=no): the kernel removes each when QEMU exits, however it exits.
    ...(input.nics ?? []).flatMap((nic, i) =>
      nic.standIn === true ? ["-device", `${device("net")},mac=${nic.mac}`] : [
        "-netdev",
        `tap,id=nic${i + 1},ifname=${nic.tap},script=no,downscript=no`,
        "-device",
        `${device("net")},netdev=nic${i + 1},mac=${nic.mac}`
      ]
    ),
    ...(input.incoming === true ? ["-incoming", "defer"] : []),
    "-daemonize",
    "-pidfile",
    input.paths.pidFile
  ]
}

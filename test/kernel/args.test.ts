import { assert, describe, it } from "@effect/vitest"
import { userNicMac } from "../../src/domain/Addressing.ts"
import {
  kvmDisqualifier,
  tscKhzFromCpuinfo,
  tscKhzFromKernelLog
} from "../../src/layers/hypervisor/qemu/internal/accel.ts"
import {
  cmdlineProblem,
  diskDeviceName,
  fastBootOptions,
  kernelCmdline,
  nicProblem,
  qemuArgs,
  type QemuArgsInput,
  runtimePaths
} from "../../src/layers/hypervisor/qemu/internal/args.ts"
import { resolveBootProfile } from "../../src/layers/hypervisor/qemu/Qemu.ts"
import { DiskAttachment, NicAttachment, PortForward } from "../../src/services/Hypervisor.ts"

const base: QemuArgsInput = {
  workspace: "ws1",
  machine: "microvm",
  accel: "tcg",
  tscKhz: 2596122,
  kernelPath: "/k/vmlinux",
  initrdPath: "/k/initrd",
  rootfsPath: "/w/root.ext4",
  memoryMiB: 512,
  cpus: 2,
  hostname: "box",
  network: "isolated",
  ports: [],
  disks: [],
  paths: runtimePaths("/run/ws1")
}

/** The value following each occurrence of a flag. */
const values = (args: ReadonlyArray<string>, flag: string) =>
  args.flatMap((arg, i) => (arg === flag ? [args[i + 1]!] : []))

describe("kernel command line", () => {
  it("is exactly the agent's contract for an isolated VM, with the compat profile's line", () => {
    assert.strictEqual(
      kernelCmdline({ ...base, bootProfile: "compat" }),
      "console=ttyS0 quiet panic=-1 tsc_early_khz=2596122 microagent.modules=all microagent.root=/dev/vda "
        + "microagent.channel=virtio:microagent.agent microagent.hostname=box"
    )
  })

  it("adds the fast profile's kernel options by default, keeping the TSC frequency", () => {
    const words = kernelCmdline({ ...base, cpus: 1 }).split(" ")
    for (
      const option of [
        "mitigations=off",
        "cryptomgr.notests",
        "tsc=reliable",
        "noreplace-smp",
        "pci=off",
        "tsc_early_khz=2596122"
      ]
    ) {
      assert.include(words, option)
    }
    assert.notInclude(words, "microagent.modules=all", "the agent loads only the drivers the boot uses")
    assert.deepStrictEqual(words.slice(0, 3), ["console=ttyS0", "quiet", "panic=-1"])
    assert.deepStrictEqual(kernelCmdline({ ...base, bootProfile: "fast" }), kernelCmdline(base))
  })

  it("presets the delay loop from the TSC and CONFIG_HZ, under TCG and in the fast profile only", () => {
    const words = kernelCmdline({ ...base, kernelHz: 250 }).split(" ")
    assert.include(words, `lpj=${Math.round((2596122 * 1000) / 250)}`)
    assert.notInclude(kernelCmdline(base), "lpj=", "no lpj without the kernel's HZ")
    assert.notInclude(kernelCmdline({ ...base, accel: "kvm", kernelHz: 250 }), "lpj=")
    assert.notInclude(kernelCmdline({ ...base, kernelHz: 250, bootProfile: "compat" }), "lpj=")
  })

  it("marks the TSC reliable for one vCPU only: more keep the periodic tick", () => {
    assert.include(kernelCmdline({ ...base, cpus: 1 }).split(" "), "tsc=reliable")
    assert.notInclude(kernelCmdline({ ...base, cpus: 2 }).split(" "), "tsc=reliable")
    assert.notInclude(kernelCmdline({ ...base, cpus: 1, bootProfile: "compat" }).split(" "), "tsc=reliable")
  })

  it("keeps PCI on q35 in the fast profile", () => {
    assert.notInclude(fastBootOptions("q35"), "pci=off")
    assert.include(fastBootOptions("microvm"), "pci=off")
    assert.notInclude(kernelCmdline({ ...base, machine: "q35" }).split(" "), "pci=off")
  })

  it("takes the boot profile from the options, then MICROAGENT_BOOT_PROFILE, else fast", () => {
    assert.strictEqual(resolveBootProfile(undefined, undefined), "fast")
    assert.strictEqual(resolveBootProfile(undefined, ""), "fast")
    assert.strictEqual(resolveBootProfile(undefined, "fast"), "fast")
    assert.strictEqual(resolveBootProfile(undefined, "compat"), "compat")
    assert.strictEqual(resolveBootProfile("fast", "compat"), "fast")
    const bad = resolveBootProfile(undefined, "turbo")
    assert.notStrictEqual(typeof bad, "string")
    assert.strictEqual(typeof bad === "string" ? "" : bad._tag, "InvalidInput")
    assert.include(typeof bad === "string" ? "" : bad.message, "MICROAGENT_BOOT_PROFILE=turbo")
  })

  it("adds slirp addressing for user networking and the disk list in attachment order", () => {
    const line = kernelCmdline({
      ...base,
      network: "user",
      disks: [
        new DiskAttachment({ name: "a", path: "/d/a.img", mountpoint: "/data", readOnly: false }),
        new DiskAttachment({ name: "b", path: "/d/b.img", mountpoint: "/ro", readOnly: true })
      ]
    })
    assert.include(line, " microagent.ip=10.0.2.15/24 microagent.gateway=10.0.2.2 microagent.dns=10.0.2.3")
    assert.isTrue(line.endsWith(" microagent.disks=vdb:/data:rw,vdc:/ro:ro"))
  })

  it("attaches a template's model and broker channels without telling the guest to serve them", () => {
    const served = { ...base, modelChannel: true, brokerPorts: [18888] }
    assert.include(kernelCmdline(served), " microagent.model=11434 microagent.brokers=18888")
    const unannounced = { ...served, channelsUnannounced: true }
    assert.notInclude(kernelCmdline(unannounced), "microagent.model")
    assert.notInclude(kernelCmdline(unannounced), "microagent.brokers")
    // The same machine either way: a restore of the template has the workspace's channels in their places.
    assert.deepStrictEqual(
      qemuArgs(unannounced).filter((a) => !a.startsWith("console=")),
      qemuArgs(served).filter((a) => !a.startsWith("console="))
    )
  })

  it("attaches a template's stand-in NICs with nothing behind them, for the guest to leave down", () => {
    const nic = new NicAttachment({
      network: "",
      tap: "",
      mac: "02:6d:61:ff:00:01",
      address: "",
      standIn: true
    })
    const input = { ...base, nics: [nic] }
    assert.include(kernelCmdline(input), " microagent.net1=02:6d:61:ff:00:01")
    assert.notInclude(kernelCmdline(input), "02:6d:61:ff:00:01,")
    const args = qemuArgs(input).join(" ")
    assert.include(args, "-device virtio-blk-device,drive=root")
    assert.include(args, "-device virtio-net-device,mac=02:6d:61:ff:00:01")
    assert.notInclude(args, "tap,")
    assert.isUndefined(nicProblem(nic))
  })

  it("attaches a template's stand-in disks without asking the guest to mount them", () => {
    const standIn = (n: number) =>
      new DiskAttachment({
        name: `s${n}`,
        path: `/t/s${n}.img`,
        mountpoint: "",
        readOnly: false,
        kind: "stand-in"
      })
    const input = { ...base, disks: [standIn(1), standIn(2)] }
    assert.notInclude(kernelCmdline(input), "microagent.disks")
    const args = qemuArgs(input).join(" ")
    assert.include(args, "id=disk1,file=/t/s1.img,format=raw,if=none -device virtio-blk-device,drive=disk1")
    assert.include(args, "id=disk2,file=/t/s2.img,format=raw,if=none -device virtio-blk-device,drive=disk2")
    // Between real disks, a stand-in keeps its place and the others their device names.
    const mixed = kernelCmdline({
      ...base,
      disks: [new DiskAttachment({ name: "a", path: "/a", mountpoint: "/a", readOnly: false }), standIn(3)]
    })
    assert.isTrue(mixed.endsWith(" microagent.disks=vdb:/a:rw"))
  })

  it("gives the guest its own addressing: resolvers, routes, and the mediator at the gateway", () => {
    const addressing = {
      ip: "10.77.0.20/24",
      gateway: "10.77.0.1",
      dns: [],
      routes: [{ destination: "203.0.113.0/24", via: "10.77.0.254" }]
    }
    const mediated = kernelCmdline({ ...base, network: "user", addressing, egressTap: "tap0" })
    assert.include(
      mediated,
      " microagent.ip=10.77.0.20/24 microagent.gateway=10.77.0.1 microagent.dns=10.77.0.1"
        + " microagent.routes=203.0.113.0/24@10.77.0.254"
    )
    // Egress off: slirp serves the same network, with its resolver at the network's third address.
    const direct = { ...base, network: "user" as const, addressing: { ...addressing, routes: [] } }
    assert.include(kernelCmdline(direct), " microagent.dns=10.77.0.3")
    assert.notInclude(kernelCmdline(direct), "microagent.routes")
    assert.include(
      values(qemuArgs(direct), "-netdev")[0],
      "user,id=net0,restrict=off,net=10.77.0.0/24,host=10.77.0.1,dns=10.77.0.3"
    )
    const own = kernelCmdline({
      ...direct,
      addressing: { ...direct.addressing, dns: ["192.0.2.53", "192.0.2.54"] }
    })
    assert.include(own, " microagent.dns=192.0.2.53,192.0.2.54")
    // Published ports go to the guest's own address, not slirp's first DHCP one.
    const ports = [new PortForward({ protocol: "tcp", hostIp: "127.0.0.1", hostPort: 8080, guestPort: 80 })]
    assert.include(
      values(qemuArgs({ ...direct, ports }), "-netdev")[0],
      ",hostfwd=tcp:127.0.0.1:8080-10.77.0.20:80"
    )
  })

  it("keeps QEMU's resolver address for a copy's own address on QEMU's network", () => {
    // A fork's child: 10.0.2.17 in place of 10.0.2.15, the mediator still answering at 10.0.2.3.
    const addressing = { ip: "10.0.2.17/24", gateway: "10.0.2.2", dns: [], routes: [] }
    const mediated = kernelCmdline({ ...base, network: "user", addressing, egressTap: "tap0" })
    assert.include(
      mediated,
      " microagent.ip=10.0.2.17/24 microagent.gateway=10.0.2.2 microagent.dns=10.0.2.3"
    )
  })

  it("leaves tsc_early_khz out under KVM", () => {
    assert.notInclude(kernelCmdline({ ...base, accel: "kvm" }), "tsc_early_khz")
  })

  it("names disks like virtio_blk and rejects values that would break the line", () => {
    assert.deepStrictEqual([0, 1, 25, 26, 27].map(diskDeviceName), ["vda", "vdb", "vdz", "vdaa", "vdab"])
    assert.isUndefined(cmdlineProblem("hostname", "my-box.local"))
    for (const bad of ["a b", "a,b", "a:b", "", "é"]) assert.isDefined(cmdlineProblem("hostname", bad), bad)
  })
})

describe("QEMU arguments", () => {
  it("boots microvm under TCG, detached, with console file, QMP and the agent port", () => {
    const args = qemuArgs(base)
    assert.deepStrictEqual(values(args, "-M"), ["microvm"])
    assert.deepStrictEqual(values(args, "-accel"), ["tcg"])
    // fast: the APIC timer that keeps running in idle (tickless guests); compat: QEMU's default CPU.
    assert.deepStrictEqual(values(args, "-cpu"), ["qemu64,+arat"])
    assert.deepStrictEqual(values(qemuArgs({ ...base, bootProfile: "compat" }), "-cpu"), [])
    assert.deepStrictEqual(values(qemuArgs({ ...base, accel: "kvm" }), "-cpu"), ["host"])
    assert.deepStrictEqual(values(args, "-m"), ["512"])
    assert.deepStrictEqual(values(args, "-smp"), ["2"])
    for (const flag of ["-nodefaults", "-no-user-config", "-no-reboot", "-daemonize"]) {
      assert.include(args, flag)
    }
    assert.deepStrictEqual(values(args, "-display"), ["none"])
    assert.deepStrictEqual(values(args, "-kernel"), ["/k/vmlinux"])
    assert.deepStrictEqual(values(args, "-initrd"), ["/k/initrd"])
    assert.deepStrictEqual(values(args, "-pidfile"), ["/run/ws1/qemu.pid"])
    assert.deepStrictEqual(values(args, "-chardev"), [
      "file,id=console,path=/run/ws1/console.log,append=on",
      "socket,id=qmp,path=/run/ws1/qmp.sock,server=on,wait=off",
      "socket,id=agent,path=/run/ws1/agent.sock,server=on,wait=off"
    ])
    assert.deepStrictEqual(values(args, "-serial"), ["chardev:console"])
    assert.deepStrictEqual(values(args, "-mon"), ["chardev=qmp,mode=control"])
    assert.deepStrictEqual(values(args, "-device"), [
      "virtio-blk-device,drive=root",
      "virtio-serial-device",
      "virtserialport,chardev=agent,name=microagent.agent"
    ])
    assert.deepStrictEqual(values(args, "-drive"), ["id=root,file=/w/root.ext4,format=raw,if=none"])
    assert.deepStrictEqual(values(args, "-netdev"), [])
  })

  it("adds slirp with host forwards, and extra disks after the root, read-only where asked", () => {
    const args = qemuArgs({
      ...base,
      network: "user",
      ports: [
        new PortForward({ hostIp: "127.0.0.1", hostPort: 8080, guestPort: 80, protocol: "tcp" }),
        new PortForward({ hostIp: "0.0.0.0", hostPort: 2222, guestPort: 22, protocol: "tcp" })
      ],
      disks: [
        new DiskAttachment({ name: "a", path: "/d/a,1.img", mountpoint: "/data", readOnly: false }),
        new DiskAttachment({ name: "b", path: "/d/b.img", mountpoint: "/ro", readOnly: true })
      ]
    })
    assert.deepStrictEqual(values(args, "-netdev"), [
      "user,id=net0,restrict=off,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=tcp:0.0.0.0:2222-:22"
    ])
    assert.deepStrictEqual(values(args, "-drive"), [
      "id=root,file=/w/root.ext4,format=raw,if=none",
      "id=disk1,file=/d/a,,1.img,format=raw,if=none", // QEMU's comma escape
      "id=disk2,file=/d/b.img,format=raw,if=none,readonly=on"
    ])
    assert.deepStrictEqual(values(args, "-device").filter((d) => d.startsWith("virtio-blk")), [
      "virtio-blk-device,drive=root",
      "virtio-blk-device,drive=disk1",
      "virtio-blk-device,drive=disk2"
    ])
    assert.include(values(args, "-device"), `virtio-net-device,netdev=net0,mac=${userNicMac("ws1")}`)
  })

  it("adds a non-persistent tap NIC per named network after the user NIC, and tells the agent its MAC", () => {
    const nics = [
      new NicAttachment({
        network: "lab",
        tap: "mtabcdef1234567",
        mac: "52:54:aa:bb:cc:dd",
        address: "10.89.0.2/24"
      }),
      new NicAttachment({
        network: "db",
        tap: "mtabcdef7654321",
        mac: "52:54:11:22:33:44",
        address: "10.89.1.5/24"
      })
    ]
    const input = { ...base, network: "user" as const, nics }
    assert.deepStrictEqual(values(qemuArgs(input), "-netdev"), [
      "user,id=net0,restrict=off",
      "tap,id=nic1,ifname=mtabcdef1234567,script=no,downscript=no",
      "tap,id=nic2,ifname=mtabcdef7654321,script=no,downscript=no"
    ])
    assert.deepStrictEqual(values(qemuArgs(input), "-device").filter((d) => d.startsWith("virtio-net")), [
      `virtio-net-device,netdev=net0,mac=${userNicMac("ws1")}`,
      "virtio-net-device,netdev=nic1,mac=52:54:aa:bb:cc:dd",
      "virtio-net-device,netdev=nic2,mac=52:54:11:22:33:44"
    ])
    const cmdline = kernelCmdline(input).split(" ")
    assert.includeMembers(cmdline, [
      "microagent.net1=52:54:aa:bb:cc:dd,10.89.0.2/24",
      "microagent.net2=52:54:11:22:33:44,10.89.1.5/24"
    ])
    assert.isUndefined(nicProblem(nics[0]!))
    const bad = (fields: Partial<NicAttachment>) => nicProblem(new NicAttachment({ ...nics[0]!, ...fields }))
    assert.include(bad({ tap: "tap,script=/x" }), "tap name")
    assert.include(bad({ tap: "a-name-longer-than-15" }), "tap name")
    assert.include(bad({ mac: "52:54:00:00:00" }), "MAC")
    assert.include(bad({ address: "10.0.0.2/24 init=/bin/sh" }), "address")
  })

  it("waits for a migration stream instead of booting only when restoring, with the same machine", () => {
    const boot = qemuArgs(base)
    const restore = qemuArgs({ ...base, incoming: true })
    assert.notInclude(boot, "-incoming")
    const at = restore.indexOf("-incoming")
    assert.strictEqual(restore[at + 1], "defer")
    // Everything else (machine, memory, devices, their order) is the boot's: the stream only fits it.
    assert.deepStrictEqual(restore.filter((_, i) => i !== at && i !== at + 1), boot)
  })

  it("names guest RAM `mem`: a shared memfd on boot, a saved file mapped privately on restore", () => {
    const boot = qemuArgs({ ...base, memory: { _tag: "Memfd" } })
    assert.deepStrictEqual(values(boot, "-M"), ["microvm,memory-backend=mem"])
    assert.deepStrictEqual(values(boot, "-object"), ["memory-backend-memfd,id=mem,size=512M,share=on"])
    const mapped = qemuArgs({
      ...base,
      incoming: true,
      memory: { _tag: "MappedFile", path: "/s/a,b/vm.state.mem" }
    })
    assert.deepStrictEqual(values(mapped, "-object"), [
      "memory-backend-file,id=mem,size=512M,mem-path=/s/a,,b/vm.state.mem,share=off"
    ])
    const stream = qemuArgs({ ...base, incoming: true, memory: { _tag: "Anonymous" } })
    assert.deepStrictEqual(values(stream, "-object"), ["memory-backend-ram,id=mem,size=512M"])
    // A stream saved before RAM had a name restores into the machine's default RAM.
    assert.deepStrictEqual(values(qemuArgs({ ...base, incoming: true }), "-object"), [])
    assert.deepStrictEqual(values(qemuArgs({ ...base, incoming: true }), "-M"), ["microvm"])
  })

  it("uses PCI devices on q35 and the host CPU under KVM", () => {
    const args = qemuArgs({ ...base, machine: "q35", accel: "kvm", network: "user" })
    assert.deepStrictEqual(values(args, "-M"), ["q35"])
    assert.deepStrictEqual(values(args, "-accel"), ["kvm"])
    assert.deepStrictEqual(values(args, "-cpu"), ["host"])
    const devices = values(args, "-device")
    assert.includeMembers(devices, [
      "virtio-blk-pci,drive=root",
      "virtio-serial-pci",
      `virtio-net-pci,netdev=net0,mac=${userNicMac("ws1")}`
    ])
  })
})

describe("accelerator facts", () => {
  it("reads the TSC frequency from the kernel log, preferring the refined calibration", () => {
    assert.strictEqual(tscKhzFromKernelLog("[0.0] tsc: Detected 2445.406 MHz processor\n"), 2445406)
    assert.strictEqual(
      tscKhzFromKernelLog(
        "tsc: Detected 2400.000 MHz processor\ntsc: Refined TSC clocksource calibration: 2396.381 MHz\n"
      ),
      2396381
    )
    assert.isUndefined(tscKhzFromKernelLog("nothing here"))
    assert.strictEqual(tscKhzFromCpuinfo("processor\t: 0\ncpu MHz\t\t: 2596.122\n"), 2596122)
  })

  it("rules KVM out without a probe when it cannot run stock kernels", () => {
    const flags = new Set(["fpu", "vmx"])
    assert.match(
      kvmDisqualifier({ devKvmUsable: false, pvmLoaded: false, cpuFlags: flags })!,
      /not accessible/
    )
    assert.match(kvmDisqualifier({ devKvmUsable: true, pvmLoaded: true, cpuFlags: flags })!, /PVM/)
    assert.match(
      kvmDisqualifier({ devKvmUsable: true, pvmLoaded: false, cpuFlags: new Set(["fpu"]) })!,
      /vmx\/svm/
    )
    assert.isUndefined(kvmDisqualifier({ devKvmUsable: true, pvmLoaded: false, cpuFlags: flags }))
  })
})

/**
 * Choosing the accelerator. `/dev/kvm` existing is not enough: on PVM-backed hosts (kvm_pvm) it
 * runs only PVM-aware guest kernels and a stock kernel crawls through KVM's instruction emulator,
 * then dies. So KVM is used only when a bounded probe boot of a stock kernel under KVM reaches the
 * kernel's own panic (no root given) and exits; the verdict is cached per host boot.
 *
 * Under TCG the guest's TSC is the host's, and microvm offers the guest nothing else to calibrate
 * it against, so the host TSC frequency is passed as `tsc_early_khz` (without it about one boot in
 * five hangs).
 */
import { Effect } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"

export interface AccelVerdict {
  readonly kvm: boolean
  readonly reason: string
}

/** Reasons to rule KVM out without booting anything; undefined when only a probe can tell. */
export const kvmDisqualifier = (host: {
  readonly devKvmUsable: boolean
  readonly pvmLoaded: boolean
  readonly cpuFlags: ReadonlySet<string>
}): string | undefined => {
  if (!host.devKvmUsable) return "/dev/kvm is missing or not accessible"
  if (host.pvmLoaded) return "/dev/kvm is PVM-backed (kvm_pvm), which runs only PVM-aware guest kernels"
  if (!host.cpuFlags.has("vmx") && !host.cpuFlags.has("svm")) {
    return "the CPU has no vmx/svm flag (no hardware virtualisation)"
  }
  return undefined
}

export const readHostFacts = () => {
  let devKvmUsable = false
  try {
    NodeFs.accessSync("/dev/kvm", NodeFs.constants.R_OK | NodeFs.constants.W_OK)
    devKvmUsable = true
  } catch {
    devKvmUsable = false
  }
  const cpuinfo = readText("/proc/cpuinfo") ?? ""
  const flagsLine = /^flags\s*:(.*)$/m.exec(cpuinfo)?.[1] ?? ""
  return {
    devKvmUsable,
    pvmLoaded: NodeFs.existsSync("/sys/module/kvm_pvm"),
    cpuFlags: new Set(flagsLine.trim().split(/\s+/))
  }
}

const readText = (path: string): string | undefined => {
  try {
    return NodeFs.readFileSync(path, "utf8")
  } catch {
    return undefined
  }
}

/** The TSC frequency in kHz from kernel log lines, preferring the refined calibration. */
export const tscKhzFromKernelLog = (log: string): number | undefined => {
  const refined = /tsc: Refined TSC clocksource calibration: ([0-9.]+) MHz/.exec(log)
  const detected = /tsc: Detected ([0-9.]+) MHz (?:processor|TSC)/.exec(log)
  const mhz = refined?.[1] ?? detected?.[1]
  return mhz === undefined ? undefined : Math.round(Number(mhz) * 1000)
}

export const tscKhzFromCpuinfo = (cpuinfo: string): number | undefined => {
  const mhz = /^cpu MHz\s*:\s*([0-9.]+)/m.exec(cpuinfo)?.[1]
  return mhz === undefined ? undefined : Math.round(Number(mhz) * 1000)
}

/** The host TSC frequency: the kernel log when readable, else /proc/cpuinfo's "cpu MHz". */
export const hostTscKhz = (): number | undefined => {
  let log = ""
  try {
    log = NodeChild.execFileSync("dmesg", [], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
      timeout: 2000
    })
  } catch {
    // dmesg may be restricted to root; cpuinfo is the fallback.
  }
  return tscKhzFromKernelLog(log) ?? tscKhzFromCpuinfo(readText("/proc/cpuinfo") ?? "")
}

/** Identifies this boot of the host; a cached verdict from an earlier boot is not trusted. */
export const hostBootId = (): string =>
  (readText("/proc/sys/kernel/random/boot_id") ?? "").trim() + "/" + NodeOs.release()

/**
 * Boots `kernelPath` under KVM with no root device: a working KVM reaches "Kernel panic" (or the
 * VFS root error) and, with panic=-1 and -no-reboot, exits within a second or two. Anything else
 * within `timeoutMs` (emulation crawl, internal error, MSR assertion) means no.
 */
export const probeKvmBoot = (qemuBinary: string, kernelPath: string, scratchDir: string, timeoutMs: number) =>
  Effect.async<AccelVerdict>((resume) => {
    const log = NodePath.join(scratchDir, `kvm-probe-${process.pid}.log`)
    const child = NodeChild.spawn(qemuBinary, [
      "-accel",
      "kvm",
      "-cpu",
      "host",
      "-M",
      "microvm",
      "-m",
      "128",
      "-nodefaults",
      "-no-user-config",
      "-display",
      "none",
      "-no-reboot",
      "-serial",
      `file:${log}`,
      "-kernel",
      kernelPath,
      "-append",
      "console=ttyS0 panic=-1"
    ], { stdio: "ignore" })
    let done = false
    const finish = (verdict: AccelVerdict) => {
      if (done) return
      done = true
      clearTimeout(timer)
      child.kill("SIGKILL")
      NodeFs.rmSync(log, { force: true })
      resume(Effect.succeed(verdict))
    }
    const timer = setTimeout(
      () =>
        finish({
          kvm: false,
          reason: `a stock kernel did not finish booting under KVM within ${timeoutMs} ms`
        }),
      timeoutMs
    )
    child.on("error", (error) => finish({ kvm: false, reason: `cannot run ${qemuBinary}: ${error.message}` }))
    child.on("exit", () => {
      const console = readText(log) ?? ""
      finish(
        /Kernel panic|VFS: Unable to mount root/.test(console)
          ? { kvm: true, reason: "a stock kernel boots under KVM" }
          : { kvm: false, reason: "QEMU stopped before the kernel ran under KVM" }
      )
    })
    return Effect.sync(() => finish({ kvm: false, reason: "probe interrupted" }))
  })

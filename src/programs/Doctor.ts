/**
 * `doctor`: what this host has and lacks for running microVMs, with the command that installs what is
 * missing. Reads only; changes nothing.
 */
import { Effect } from "effect"
import { spawnSync } from "node:child_process"
import * as NodeFs from "node:fs"
import type { HomeShape } from "../services/Home.ts"
import { HostProbes, type HostProbesShape } from "../services/HostProbes.ts"
import { StateDatabase, type StateDatabaseShape } from "../services/StateDatabase.ts"
import { checkStateFile } from "./State.ts"

export interface Check {
  readonly name: string
  readonly ok: boolean
  /** Required checks make `doctor` fail; the others only warn. */
  readonly required: boolean
  readonly detail: string
  readonly remediation?: string
}

/** The first non-empty line a tool prints about its version, on stdout or stderr. */
const firstLine = (command: string, args: ReadonlyArray<string>): string => {
  const result = spawnSync(command, [...args], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
    timeout: 5000
  })
  return `${result.stdout ?? ""}${result.stderr ?? ""}`.split("\n").find((line) => line.trim().length > 0)
    ?.trim() ?? ""
}

const toolOn = (probes: HostProbesShape) =>
(
  name: string,
  command: string,
  versionArgs: ReadonlyArray<string>,
  pkg: string,
  required = true
): Check => {
  const path = probes.onPath(command)
  if (path === undefined) {
    return {
      name,
      ok: false,
      required,
      detail: `${command} not found`,
      remediation: `apt-get install ${pkg}`
    }
  }
  return { name, ok: true, required, detail: `${path}: ${firstLine(path, versionArgs)}`.trim() }
}

const qemuBinary = process.arch === "arm64" ? "qemu-system-aarch64" : "qemu-system-x86_64"
const qemuPackage = process.arch === "arm64" ? "qemu-system-arm" : "qemu-system-x86"

const kvmCheck = (): Check => {
  try {
    NodeFs.accessSync("/dev/kvm", NodeFs.constants.R_OK | NodeFs.constants.W_OK)
  } catch {
    return {
      name: "acceleration",
      ok: true,
      required: false,
      detail: "/dev/kvm is not usable: VMs run under QEMU's TCG emulation (slower, but works)",
      remediation:
        "on a host with hardware virtualization, load kvm_intel or kvm_amd and add yourself to group kvm"
    }
  }
  return {
    name: "acceleration",
    ok: true,
    required: false,
    detail: "/dev/kvm is present; the qemu backend probes whether it boots a stock kernel and uses TCG if not"
  }
}

/** Named networks need iproute2, /dev/net/tun and CAP_NET_ADMIN; user and isolated networking need none. */
const namedNetworksCheck = (probes: HostProbesShape): Check => {
  const problem = probes.fabricProblem()
  return problem === undefined
    ? {
      name: "networks",
      ok: true,
      required: false,
      detail: "ip, /dev/net/tun and CAP_NET_ADMIN: named networks work"
    }
    : {
      name: "networks",
      ok: false,
      required: false,
      detail: problem.message,
      remediation: problem.remediation
    }
}

/** The state database of `home`: a full integrity check (reads only; a missing database is fine when new). */
export const stateCheck = (db: StateDatabaseShape, home: HomeShape): Check => {
  const result = checkStateFile(db, home.database, db.evidenceOfRecords(home))
  if (result.ok) {
    const newest = result.backups[0]
    return {
      name: "state",
      ok: true,
      required: true,
      detail: result.exists
        ? `${home.database}: integrity ok, schema ${result.schemaVersion ?? "?"}; ${
          newest === undefined ? "no backups yet" : `newest backup ${newest.createdAt}`
        }`
        : `${home.database} does not exist yet (made by the first command that records something)`
    }
  }
  return {
    name: "state",
    ok: false,
    required: true,
    detail: `${home.database}: ${result.problems.slice(0, 3).join("; ")}`,
    ...(result.remediation === undefined ? {} : { remediation: result.remediation })
  }
}

/** `doctor` with the state check of `home` after the host checks. */
export const doctorWithState = (home: HomeShape) =>
  Effect.zipWith(doctor, StateDatabase, (report, db) => {
    const checks = [...report.checks, stateCheck(db, home)]
    return { ok: checks.every((check) => check.ok || !check.required), checks }
  })

export const doctor = Effect.map(
  HostProbes,
  (probes): { readonly ok: boolean; readonly checks: ReadonlyArray<Check> } => {
    const tool = toolOn(probes)
    const major = Number(process.versions.node.split(".")[0])
    const checks: Array<Check> = [
      {
        name: "node",
        ok: major >= 20,
        required: true,
        detail: `node ${process.versions.node}`,
        ...(major >= 20 ? {} : { remediation: "install Node.js 20 or newer" })
      },
      tool("qemu", qemuBinary, ["--version"], qemuPackage),
      kvmCheck(),
      tool("mke2fs", "mke2fs", ["-V"], "e2fsprogs"),
      tool("debugfs", "debugfs", ["-V"], "e2fsprogs"),
      tool("e2fsck", "e2fsck", ["-V"], "e2fsprogs"),
      tool("resize2fs", "resize2fs", [], "e2fsprogs", false),
      tool("qemu-img", "qemu-img", ["--version"], "qemu-utils", false),
      tool("lz4", "lz4", ["--version"], "lz4"),
      tool("zstd", "zstd", ["--version"], "zstd"),
      tool("xz", "xz", ["--version"], "xz-utils", false),
      tool("apt-get", "apt-get", ["--version"], "apt", false),
      tool("dpkg-deb", "dpkg-deb", ["--version"], "dpkg", false),
      tool("busybox", "busybox", ["--help"], "busybox-static", false),
      {
        name: "/dev/net/tun",
        ok: NodeFs.existsSync("/dev/net/tun"),
        required: false,
        detail: NodeFs.existsSync("/dev/net/tun") ? "present (named networks can use tap devices)" : "absent",
        ...(NodeFs.existsSync("/dev/net/tun")
          ? {}
          : { remediation: "modprobe tun (needed only for named networks)" })
      },
      namedNetworksCheck(probes)
    ]
    return { ok: checks.every((check) => check.ok || !check.required), checks }
  }
)

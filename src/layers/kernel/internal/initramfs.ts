/**
 * The initramfs layout the guest agent expects: `/init` (the agent, PID 1), the modules it loads in
 * the order of `/lib/modules/load.list`, and the mount points it uses before switching root.
 *
 * A load.list line is `FILE.ko` for a module every boot needs, or `FILE.ko CLASS` for one the agent
 * loads only when the boot uses it (`net`: a NIC to configure; `vsock`: a vsock channel).
 */
import * as NodeZlib from "node:zlib"
import { type CpioEntry, writeCpio } from "./cpio.ts"

/** When the agent loads a module: every boot, or only when the boot has a NIC or a vsock channel. */
export type LoadClass = "boot" | "net" | "vsock"

const loadListLine = (name: string, loadClass: LoadClass = "boot") =>
  `${name}.ko${loadClass === "boot" ? "" : ` ${loadClass}`}\n`

export interface InitramfsInput {
  readonly agent: Uint8Array
  /** In load order. */
  readonly modules: ReadonlyArray<
    { readonly name: string; readonly data: Uint8Array; readonly loadClass?: LoadClass | undefined }
  >
  readonly compression: "gzip" | "none"
}

const initramfsEntries = (input: InitramfsInput): ReadonlyArray<CpioEntry> => [
  { type: "directory", path: "dev" },
  { type: "directory", path: "proc", mode: 0o555 },
  { type: "directory", path: "sys", mode: 0o555 },
  { type: "directory", path: "newroot" },
  { type: "directory", path: "lib" },
  { type: "directory", path: "lib/modules" },
  { type: "file", path: "init", mode: 0o755, data: input.agent },
  ...input.modules.map((m): CpioEntry => ({ type: "file", path: `lib/modules/${m.name}.ko`, data: m.data })),
  {
    type: "file",
    path: "lib/modules/load.list",
    data: new TextEncoder().encode(input.modules.map((m) => loadListLine(m.name, m.loadClass)).join(""))
  }
]

export const buildInitramfs = (input: InitramfsInput): Uint8Array => {
  const archive = writeCpio(initramfsEntries(input))
  // Level 1: under TCG the guest's inflate time matters more than a few hundred KB of size.
  return input.compression === "gzip" ? NodeZlib.gzipSync(archive, { level: 1 }) : archive
}

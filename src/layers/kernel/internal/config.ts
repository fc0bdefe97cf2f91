/**
 * The kernel's timer frequency (`CONFIG_HZ`) from the build configuration shipped beside it
 * (`boot/config-<version>` in Debian and Ubuntu packages). The qemu backend needs it to tell the
 * guest its delay-loop constant (`lpj`, loops per jiffy) instead of letting each CPU measure it.
 */
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"

/** `CONFIG_HZ` of a kernel configuration, if it sets a plausible one. */
export const hzFromConfig = (config: string): number | undefined => {
  const match = /^CONFIG_HZ=(\d+)$/m.exec(config)
  const hz = match === null ? undefined : Number(match[1])
  return hz !== undefined && hz >= 24 && hz <= 10_000 ? hz : undefined
}

/** Reads `config-<version>` next to a kernel file (a package's `boot/`), if it is there. */
export const hzBesideKernel = (kernelFile: string, version: string): number | undefined => {
  try {
    return hzFromConfig(
      NodeFs.readFileSync(NodePath.join(NodePath.dirname(kernelFile), `config-${version}`), "utf8")
    )
  } catch {
    return undefined
  }
}

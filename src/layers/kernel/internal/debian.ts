/**
 * The distribution's cloud kernel, fetched without installing anything: resolve the metapackage to
 * the real package (`apt-cache depends`), `apt-get download` it into a scratch directory and unpack
 * it with `dpkg-deb -x`.
 */
import { Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import type { Arch } from "../../../services/KernelCache.ts"
import { io, KernelCacheFailure, runTool, runToolChecked } from "./tools.ts"

export const defaultDebianPackage = (arch: Arch): string =>
  arch === "x86_64" ? "linux-image-cloud-amd64" : "linux-image-cloud-arm64"

export const isDebianLike = (): boolean =>
  NodeFs.existsSync("/usr/bin/apt-get") && NodeFs.existsSync("/usr/bin/dpkg-deb")

const withVersion = (pkg: string, version: string | undefined) =>
  version === undefined ? pkg : `${pkg}=${version}`

/** The real kernel package behind a metapackage, or the name itself when it is already real. */
export const resolvePackage = (pkg: string, version: string | undefined) =>
  Effect.gen(function*() {
    const result = yield* runTool({
      command: "apt-cache",
      args: ["depends", withVersion(pkg, version)],
      debianPackage: "apt"
    })
    if (result.code !== 0) {
      return yield* new KernelCacheFailure({
        reason: "NotFound",
        message: `apt-cache does not know ${withVersion(pkg, version)}: ${result.stderr.trim()}`,
        remediation: "run `apt-get update`, or check the package name and version"
      })
    }
    // "  Depends: linux-image-6.1.0-50-cloud-amd64"
    const real = result.stdout
      .split("\n")
      .map((line) => /^\s*Depends:\s*(linux-image-[0-9]\S*)/.exec(line)?.[1])
      .find((name) => name !== undefined)
    // A metapackage's version does not apply to the package it points to.
    return real === undefined ? { name: pkg, version } : { name: real, version: undefined }
  })

/** Downloads one package into `dir` and returns the .deb path. */
export const downloadPackage = (name: string, version: string | undefined, dir: string) =>
  Effect.gen(function*() {
    // As root, apt's download sandbox user cannot write to a private directory: download as root.
    const sandbox = process.getuid?.() === 0 ? ["-o", "APT::Sandbox::User=root"] : []
    yield* runToolChecked({
      command: "apt-get",
      args: [...sandbox, "download", "-q", withVersion(name, version)],
      debianPackage: "apt",
      cwd: dir
    }).pipe(
      Effect.mapError((failure) =>
        new KernelCacheFailure({
          reason: "ToolFailed",
          message: `cannot download ${withVersion(name, version)}: ${failure.message}`,
          remediation: "check the network and the apt sources (`apt-get update`)"
        })
      )
    )
    const debs = yield* io(`listing ${dir}`, () => NodeFs.readdirSync(dir).filter((f) => f.endsWith(".deb")))
    const deb = debs.find((file) => file.startsWith(`${name}_`))
    if (deb === undefined) {
      return yield* new KernelCacheFailure({
        reason: "ToolFailed",
        message: `apt-get download left no ${name}_*.deb`
      })
    }
    return NodePath.join(dir, deb)
  })

export const extractPackage = (deb: string, dir: string) =>
  runToolChecked({ command: "dpkg-deb", args: ["-x", deb, dir], debianPackage: "dpkg" }).pipe(Effect.asVoid)

export interface UnpackedPackage {
  readonly kernelFile: string
  readonly version: string
  readonly modulesDir: string | undefined
}

/** Finds `boot/vmlinuz-<version>` and its modules directory in an unpacked kernel package. */
export const findKernelInTree = (root: string) =>
  Effect.gen(function*() {
    const bootDir = NodePath.join(root, "boot")
    const candidates = yield* io(`listing ${bootDir}`, () =>
      NodeFs.existsSync(bootDir)
        ? NodeFs.readdirSync(bootDir).filter((f) => f.startsWith("vmlinuz-") || f.startsWith("vmlinux-"))
        : [])
    const kernel = candidates.sort()[0]
    if (kernel === undefined) {
      return yield* new KernelCacheFailure({
        reason: "BadInput",
        message: "the package has no boot/vmlinuz-*"
      })
    }
    const version = kernel.replace(/^vmlinu[zx]-/, "")
    // Merged-/usr distributions put modules under usr/lib/modules.
    const modulesDir = [
      NodePath.join(root, "lib/modules", version),
      NodePath.join(root, "usr/lib/modules", version)
    ]
      .find((dir) => NodeFs.existsSync(dir))
    return { kernelFile: NodePath.join(bootDir, kernel), version, modulesDir } satisfies UnpackedPackage
  })

/**
 * Helpers for tests that boot real VMs: required host tools (a missing one fails, naming its Debian
 * package), the guest agent built from source, a shared kernel cache filled once per machine, and
 * small ext4 root filesystems.
 */
import { Effect, Layer } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import * as NodeUrl from "node:url"
import { FileKernelCache } from "../../src/layers/kernel/FileKernelCache.ts"
import { Home } from "../../src/services/Home.ts"
import { type BootArtifacts, KernelCache, type Machine } from "../../src/services/KernelCache.ts"

const here = NodePath.dirname(NodeUrl.fileURLToPath(import.meta.url))
export const repoRoot = NodePath.resolve(here, "../..")

const temporaries: Array<string> = []

/** A private temporary directory; `cleanupTempDirs` (run it in `afterAll`) removes it. */
export const tempDir = (prefix: string): string => {
  const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), prefix))
  temporaries.push(dir)
  return dir
}

export const cleanupTempDirs = (): void => {
  for (const path of temporaries.splice(0)) NodeFs.rmSync(path, { recursive: true, force: true })
}

/** Fails (never skips) when a tool is missing, naming the Debian package to install. */
export const requireTool = (command: string, debianPackage: string): string => {
  for (const dir of (process.env.PATH ?? "").split(":").concat(["/usr/sbin", "/sbin"])) {
    const candidate = NodePath.join(dir, command)
    if (NodeFs.existsSync(candidate)) return candidate
  }
  throw new Error(`${command} is required for this test: apt-get install ${debianPackage}`)
}

export const requireVmTools = () => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("mke2fs", "e2fsprogs")
  requireTool("apt-get", "apt")
  requireTool("dpkg-deb", "dpkg")
  requireTool("gcc", "gcc")
  if (!NodeFs.existsSync("/bin/busybox")) {
    throw new Error("/bin/busybox is required: apt-get install busybox-static")
  }
}

/** Pids of the QEMU processes whose command line mentions `path` (a state or runtime directory). */
export const qemuProcessesMentioning = (path: string): Array<number> =>
  NodeFs.readdirSync("/proc").filter((entry) => /^\d+$/.test(entry)).flatMap((pid) => {
    try {
      const cmdline = NodeFs.readFileSync(`/proc/${pid}/cmdline`, "utf8")
      return cmdline.includes("qemu-system") && cmdline.includes(path) ? [Number(pid)] : []
    } catch {
      return []
    }
  })

/** Survives across test files and runs (a machine-wide cache; set MICROAGENT_TEST_CACHE to move it). */
export const testCacheDir = (): string => {
  const dir = process.env.MICROAGENT_TEST_CACHE ?? NodePath.join(NodeOs.tmpdir(), "microagent-test-cache")
  NodeFs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  return dir
}

/** The guest agent, built by `make -C guest` (incrementally) so tests boot the current source. */
export const agentBinary = (): string => {
  requireTool("make", "make")
  requireTool("gcc", "gcc")
  const guest = NodePath.join(repoRoot, "guest")
  try {
    NodeChild.execFileSync("make", ["-s", "-C", guest], { stdio: "pipe" })
  } catch (error) {
    throw new Error(`make -C guest failed: ${String((error as { stderr?: unknown }).stderr ?? error)}`)
  }
  const binary = NodePath.join(guest, "build/microagent-agent")
  if (!NodeFs.existsSync(binary)) throw new Error(`make -C guest did not produce ${binary}`)
  return binary
}

export const kernelCacheLayer = (stateDir: string, agentPath?: string) =>
  FileKernelCache.layer(agentPath === undefined ? {} : { agentPath }).pipe(
    Layer.provideMerge(Home.layer(stateDir))
  )

/**
 * Kernel and initramfs from a state directory shared by every test of the machine. The kernel is
 * installed from the Debian cloud kernel package unpacked by `debianKernelTree` (downloaded once per
 * machine); the agent defaults to the one built from `guest/`.
 */
export const sharedBootArtifacts = (
  options: { readonly agentPath?: string; readonly machine?: Machine } = {}
): Effect.Effect<BootArtifacts, unknown> =>
  Effect.gen(function*() {
    const cache = yield* KernelCache
    if ((yield* cache.list).length === 0) {
      const tree = debianKernelTree()
      yield* cache.install({ path: tree.bzImage, modulesDir: tree.modulesDir }, "x86_64")
    }
    return yield* cache.ensure("x86_64", options.machine === undefined ? {} : { machine: options.machine })
  }).pipe(
    Effect.provide(
      kernelCacheLayer(NodePath.join(testCacheDir(), "state"), options.agentPath ?? agentBinary())
    )
  )

/**
 * An ext4 image with busybox and its applets (`mke2fs -d`, no root needed). `extra` files are
 * written relative to the image root.
 */
export const makeRootfs = (
  image: string,
  options: { readonly sizeMiB?: number; readonly extra?: Record<string, string> } = {}
): string => {
  requireTool("mke2fs", "e2fsprogs")
  if (!NodeFs.existsSync("/bin/busybox")) {
    throw new Error("/bin/busybox is required: apt-get install busybox-static")
  }
  const tree = `${image}.tree`
  NodeFs.rmSync(tree, { recursive: true, force: true })
  for (const dir of ["bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root", "mnt"]) {
    NodeFs.mkdirSync(NodePath.join(tree, dir), { recursive: true })
  }
  NodeFs.copyFileSync("/bin/busybox", NodePath.join(tree, "bin/busybox"))
  NodeFs.chmodSync(NodePath.join(tree, "bin/busybox"), 0o755)
  const applets = NodeChild.execFileSync("/bin/busybox", ["--list"], { encoding: "utf8" }).split("\n")
  for (const applet of applets) {
    if (applet.length > 0 && applet !== "busybox") {
      NodeFs.symlinkSync("busybox", NodePath.join(tree, "bin", applet))
    }
  }
  NodeFs.symlinkSync("../bin/busybox", NodePath.join(tree, "sbin/init"))
  for (const [path, content] of Object.entries(options.extra ?? {})) {
    NodeFs.mkdirSync(NodePath.dirname(NodePath.join(tree, path)), { recursive: true })
    NodeFs.writeFileSync(NodePath.join(tree, path), content)
  }
  NodeChild.execFileSync(
    "mke2fs",
    ["-q", "-F", "-t", "ext4", "-E", "root_owner=0:0", "-d", tree, image, `${options.sizeMiB ?? 32}M`],
    { stdio: "pipe" }
  )
  NodeFs.rmSync(tree, { recursive: true, force: true })
  return image
}

/** Runs `f` while holding a machine-wide lock directory in the test cache (stale after 10 minutes). */
const withMachineLock = (name: string, f: () => void) => {
  const lock = NodePath.join(testCacheDir(), `${name}.lock`)
  const sleeper = new Int32Array(new SharedArrayBuffer(4))
  for (let waited = 0;; waited += 100) {
    try {
      NodeFs.mkdirSync(lock)
      break
    } catch {
      const stat = NodeFs.statSync(lock, { throwIfNoEntry: false })
      if (stat !== undefined && Date.now() - stat.mtimeMs > 600_000) {
        NodeFs.rmSync(lock, { recursive: true, force: true })
      }
      if (waited > 300_000) throw new Error(`timed out waiting for ${lock}`)
      Atomics.wait(sleeper, 0, 0, 100)
    }
  }
  try {
    f()
  } finally {
    NodeFs.rmSync(lock, { recursive: true, force: true })
  }
}

/**
 * The Debian cloud kernel package unpacked once per machine (for tests that need the raw bzImage
 * and module files, which the kernel cache does not keep).
 */
export const debianKernelTree = (): {
  readonly bzImage: string
  readonly modulesDir: string
  readonly version: string
} => {
  requireTool("apt-get", "apt")
  requireTool("dpkg-deb", "dpkg")
  const depends = NodeChild.execFileSync("apt-cache", ["depends", "linux-image-cloud-amd64"], {
    encoding: "utf8"
  })
  const pkg = /Depends:\s*(linux-image-[0-9]\S*)/.exec(depends)?.[1]
  if (pkg === undefined) {
    throw new Error("apt-cache cannot resolve linux-image-cloud-amd64: run apt-get update")
  }
  const version = pkg.replace(/^linux-image-/, "")
  const root = NodePath.join(testCacheDir(), "deb", version)
  const bzImage = NodePath.join(root, "boot", `vmlinuz-${version}`)
  if (!NodeFs.existsSync(bzImage)) {
    // Test files run in parallel workers: one downloads, the others wait for it.
    withMachineLock(`deb-${version}`, () => {
      if (NodeFs.existsSync(bzImage)) return
      const download = NodeFs.mkdtempSync(NodePath.join(testCacheDir(), "apt-"))
      const sandbox = process.getuid?.() === 0 ? ["-o", "APT::Sandbox::User=root"] : []
      NodeChild.execFileSync("apt-get", [...sandbox, "download", "-q", pkg], { cwd: download, stdio: "pipe" })
      const deb = NodeFs.readdirSync(download).find((f) => f.endsWith(".deb"))!
      const staging = `${root}.${process.pid}.tmp`
      NodeFs.mkdirSync(staging, { recursive: true })
      NodeChild.execFileSync("dpkg-deb", ["-x", NodePath.join(download, deb), staging], { stdio: "pipe" })
      NodeFs.rmSync(download, { recursive: true, force: true })
      NodeFs.rmSync(root, { recursive: true, force: true })
      NodeFs.renameSync(staging, root)
    })
  }
  return { bzImage, modulesDir: NodePath.join(root, "lib/modules", version), version }
}

/**
 * Helpers for tests that boot real VMs: required host tools (a missing one fails, naming its Debian
 * package), a shared kernel cache filled once per machine, small ext4 root filesystems, and the
 * stand-in init (test/kernel/fixtures/testinit.c) with its line-protocol guest control.
 */
import * as NodeChild from "node:child_process"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodeNet from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import * as NodeUrl from "node:url"
import { FetchHttpClient } from "@effect/platform"
import { Effect, Layer } from "effect"
import { FileKernelCache } from "../../src/layers/kernel/FileKernelCache.ts"
import type { GuestControl } from "../../src/layers/hypervisor/qemu/Qemu.ts"
import { Home } from "../../src/services/Home.ts"
import type { ChannelEndpoint } from "../../src/services/Hypervisor.ts"
import { type BootArtifacts, KernelCache, type Machine } from "../../src/services/KernelCache.ts"

const here = NodePath.dirname(NodeUrl.fileURLToPath(import.meta.url))
export const repoRoot = NodePath.resolve(here, "../..")

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
  if (!NodeFs.existsSync("/bin/busybox")) throw new Error("/bin/busybox is required: apt-get install busybox-static")
}

/** Survives across test files and runs (a machine-wide cache; set MICROAGENT_TEST_CACHE to move it). */
export const testCacheDir = (): string => {
  const dir = process.env.MICROAGENT_TEST_CACHE ?? NodePath.join(NodeOs.tmpdir(), "microagent-test-cache")
  NodeFs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  return dir
}

/** Compiles the stand-in init once per source version. */
export const testInitBinary = (): string => {
  requireTool("gcc", "gcc")
  const source = NodePath.join(repoRoot, "test/kernel/fixtures/testinit.c")
  const digest = NodeCrypto.createHash("sha256").update(NodeFs.readFileSync(source)).digest("hex").slice(0, 16)
  const out = NodePath.join(testCacheDir(), `testinit-${digest}`)
  if (!NodeFs.existsSync(out)) {
    const temp = `${out}.${process.pid}.tmp`
    NodeChild.execFileSync("gcc", ["-static", "-O2", "-o", temp, source], { stdio: "pipe" })
    NodeFs.renameSync(temp, out)
  }
  return out
}

/** The real guest agent, built by `make -C guest`; undefined when the guest tree has no agent yet. */
export const realAgentBinary = (): string | undefined => {
  const makefile = NodePath.join(repoRoot, "guest/Makefile")
  if (!NodeFs.existsSync(makefile)) return undefined
  NodeChild.execFileSync("make", ["-s", "-C", NodePath.join(repoRoot, "guest")], { stdio: "pipe" })
  const binary = NodePath.join(repoRoot, "guest/build/microagent-agent")
  return NodeFs.existsSync(binary) ? binary : undefined
}

export const kernelCacheLayer = (stateDir: string, agentPath?: string) =>
  FileKernelCache.layer(agentPath === undefined ? {} : { agentPath }).pipe(
    Layer.provideMerge(Home.layer(stateDir)),
    Layer.provide(FetchHttpClient.layer)
  )

/**
 * Kernel and initramfs from a state directory shared by every test of the machine, so the Debian
 * kernel is downloaded once. The agent defaults to the real one (built if needed), else the stand-in.
 */
export const sharedBootArtifacts = (options: { readonly agentPath?: string; readonly machine?: Machine } = {}) =>
  Effect.gen(function*() {
    const cache = yield* KernelCache
    return yield* cache.ensure("x86_64", options.machine === undefined ? {} : { machine: options.machine })
  }).pipe(
    Effect.provide(
      kernelCacheLayer(
        NodePath.join(testCacheDir(), "state"),
        options.agentPath ?? realAgentBinary() ?? testInitBinary()
      )
    )
  ) as Effect.Effect<BootArtifacts, unknown>

/**
 * An ext4 image with busybox and its applets (`mke2fs -d`, no root needed). `extra` files are
 * written relative to the image root.
 */
export const makeRootfs = (
  image: string,
  options: { readonly sizeMiB?: number; readonly extra?: Record<string, string> } = {}
): string => {
  requireTool("mke2fs", "e2fsprogs")
  if (!NodeFs.existsSync("/bin/busybox")) throw new Error("/bin/busybox is required: apt-get install busybox-static")
  const tree = `${image}.tree`
  NodeFs.rmSync(tree, { recursive: true, force: true })
  for (const dir of ["bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root", "mnt"]) {
    NodeFs.mkdirSync(NodePath.join(tree, dir), { recursive: true })
  }
  NodeFs.copyFileSync("/bin/busybox", NodePath.join(tree, "bin/busybox"))
  NodeFs.chmodSync(NodePath.join(tree, "bin/busybox"), 0o755)
  const applets = NodeChild.execFileSync("/bin/busybox", ["--list"], { encoding: "utf8" }).split("\n")
  for (const applet of applets) {
    if (applet.length > 0 && applet !== "busybox") NodeFs.symlinkSync("busybox", NodePath.join(tree, "bin", applet))
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

/** One line exchange with the stand-in init over the agent socket. */
const lineExchange = (endpoint: ChannelEndpoint, line: string, expect: string | undefined) =>
  Effect.async<void, Error>((resume) => {
    if (endpoint._tag !== "UnixSocket") {
      resume(Effect.fail(new Error("the stand-in init speaks over a unix socket only")))
      return
    }
    const socket = NodeNet.createConnection({ path: endpoint.path })
    let received = ""
    let done = false
    const finish = (result: Effect.Effect<void, Error>) => {
      if (done) return
      done = true
      socket.destroy()
      resume(result)
    }
    socket.on("connect", () => {
      socket.write(`${line}\n`)
      if (expect === undefined) socket.end(() => finish(Effect.void))
    })
    socket.on("data", (chunk) => {
      received += chunk.toString("utf8")
      if (expect !== undefined && received.includes(`${expect}\n`)) finish(Effect.void)
    })
    socket.on("error", (error) => finish(Effect.fail(error)))
    socket.on("close", () => finish(Effect.fail(new Error("closed"))))
    return Effect.sync(() => finish(Effect.void))
  })

/** Guest control for the stand-in init: "ping" answered by "pong" is readiness. */
export const testInitControl: GuestControl = {
  ready: (endpoint) => lineExchange(endpoint, "ping", "pong"),
  shutdown: (endpoint) => lineExchange(endpoint, "shutdown", undefined)
}

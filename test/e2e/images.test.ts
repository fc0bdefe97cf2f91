/**
 * The image pipeline against real parts: Debian's docker-registry on loopback (one open, one behind
 * htpasswd), images written as OCI layouts and pushed with skopeo, trees cross-checked with
 * `umoci unpack --rootless`, filesystems checked with e2fsck and read back with debugfs.
 */
import { Command } from "@effect/cli"
import * as NodeContext from "@effect/platform-node/NodeContext"
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Layer } from "effect"
import * as esbuild from "esbuild"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, beforeAll } from "vitest"
import { imageCommand } from "../../src/cli/image.ts"
import { Invocation } from "../../src/cli/Invocation.ts"
import { makeImageStore } from "../../src/layers/image/ImageStoreLive.ts"
import { imageDependencies } from "../../src/layers/image/Stack.ts"
import type { ImageStoreAdmin } from "../../src/services/ImageStore.ts"
import {
  busyboxLayers,
  hostArchitecture,
  pushBusyboxImage,
  pushSpec,
  readExt4Tree,
  type TarSpec,
  type TreeEntry,
  umociUnpack,
  writeOciLayout
} from "../support/images.ts"
import {
  inspectImage,
  requireTool,
  skopeo,
  startRegistry,
  startTokenProxy,
  type TestRegistry
} from "../support/registry.ts"

let registry: TestRegistry
let secured: TestRegistry
let scratch: string

beforeAll(async () => {
  for (
    const [tool, pkg] of [
      ["mke2fs", "e2fsprogs"],
      ["debugfs", "e2fsprogs"],
      ["e2fsck", "e2fsprogs"],
      [
        "zstd",
        "zstd"
      ],
      ["umoci", "umoci"],
      ["skopeo", "skopeo"]
    ] as const
  ) requireTool(tool, pkg)
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-images-e2e-"))
  registry = await startRegistry()
  secured = await startRegistry({ auth: { username: "agent", password: "s3cret-pass" } })
})

afterAll(async () => {
  await registry?.stop()
  await secured?.stop()
  if (scratch !== undefined) NodeFs.rmSync(scratch, { recursive: true, force: true })
})

let homeCounter = 0
const freshHome = () => NodePath.join(scratch, `home-${++homeCounter}`)

/** Runs `f` with a live admin store rooted at `home`. */
const withStore = <A, E>(home: string, f: (store: ImageStoreAdmin) => Effect.Effect<A, E>) =>
  Effect.flatMap(makeImageStore, f).pipe(Effect.provide(imageDependencies(home).pipe(Layer.orDie)))

/** Layers exercising whiteouts, opaque dirs, owners, setuid, hard links, symlinks, FIFOs and xattrs. */
const featureLayers: Array<Array<TarSpec>> = [
  [
    { path: "etc/", type: "dir" },
    { path: "etc/os-release", content: "ID=microagent-test\n" },
    { path: "usr/", type: "dir" },
    { path: "usr/bin/", type: "dir" },
    { path: "usr/bin/tool", content: "#!/bin/sh\necho tool\n", mode: 0o755 },
    { path: "usr/bin/su", content: "setuid binary", mode: 0o4755 },
    { path: "usr/bin/wall", content: "setgid binary", mode: 0o2755, gid: 5 },
    { path: "usr/bin/su-again", type: "hardlink", linkname: "usr/bin/su" },
    { path: "usr/bin/tool-link", type: "hardlink", linkname: "usr/bin/tool" },
    { path: "bin", type: "symlink", linkname: "usr/bin" },
    { path: "home/", type: "dir" },
    { path: "home/agent/", type: "dir", mode: 0o750, uid: 1000, gid: 1000 },
    { path: "home/agent/notes.txt", content: "private", mode: 0o600, uid: 1000, gid: 1000 },
    { path: "home/agent/shared", content: "group", mode: 0o640, uid: 1000, gid: 2000 },
    { path: "opt/", type: "dir" },
    { path: "opt/lower/", type: "dir" },
    { path: "opt/lower/a", content: "a" },
    { path: "opt/lower/b", content: "b" },
    { path: "data/", type: "dir" },
    { path: "data/old1", content: "old" },
    { path: "data/sub/", type: "dir" },
    { path: "data/sub/old2", content: "old" },
    { path: "tmp/", type: "dir", mode: 0o1777 },
    { path: "run/", type: "dir" },
    { path: "run/control", type: "fifo", mode: 0o620 },
    { path: "etc/shadow", content: "root:*:1::::::\n", mode: 0o000 },
    { path: "etc/capable", content: "cap", xattrs: { "user.comment": "kept" } },
    { path: `etc/${"long-name-".repeat(12)}end`, content: "pax path" }
  ],
  [
    { path: "opt/lower/.wh.a", content: "" },
    { path: "data/", type: "dir" },
    { path: "data/.wh..wh..opq", content: "" },
    { path: "data/new", content: "new" },
    { path: "etc/os-release", content: "ID=microagent-test\nVERSION=2\n" },
    { path: "usr/bin/extra", content: "via the bin symlink's target", mode: 0o700 }
  ],
  [
    { path: "opt/.wh.lower", content: "" },
    { path: "opt/upper/", type: "dir", mode: 0o700, uid: 33, gid: 33 },
    { path: "opt/upper/file", content: "upper", uid: 33, gid: 33 },
    { path: "etc/os-release", type: "symlink", linkname: "../usr/lib/os-release" },
    { path: "usr/lib/", type: "dir" },
    { path: "usr/lib/os-release", content: "ID=final\n" }
  ]
]

const compareTrees = (ours: Map<string, TreeEntry>, theirs: Map<string, TreeEntry>) => {
  const problems: Array<string> = []
  for (const [path, expected] of theirs) {
    const actual = ours.get(path)
    if (actual === undefined) {
      problems.push(`${path}: missing`)
      continue
    }
    if (actual.type !== expected.type) problems.push(`${path}: type ${actual.type} != ${expected.type}`)
    if (expected.type !== "symlink") {
      if (actual.mode !== expected.mode) {
        problems.push(`${path}: mode ${actual.mode.toString(8)} != ${expected.mode.toString(8)}`)
      }
      // umoci cannot record owners of symlinks when rootless (no user xattrs on links).
      if (actual.uid !== expected.uid || actual.gid !== expected.gid) {
        problems.push(`${path}: owner ${actual.uid}:${actual.gid} != ${expected.uid}:${expected.gid}`)
      }
    }
    if (actual.link !== expected.link) problems.push(`${path}: link ${actual.link} != ${expected.link}`)
    if (actual.sha256 !== expected.sha256) problems.push(`${path}: content differs`)
  }
  for (const path of ours.keys()) if (!theirs.has(path)) problems.push(`${path}: unexpected`)
  return problems
}

/** Stage directories this process left in the memory stage dir (there must be none after a build). */
const leftoverStages = () =>
  NodeFs.existsSync("/dev/shm")
    ? NodeFs.readdirSync("/dev/shm").filter((n) => n.startsWith(`rootfs-stage-${process.pid}-`))
    : []

const fsck = (image: string) => {
  const result = NodeChild.spawnSync("e2fsck", ["-f", "-n", image], { encoding: "utf8" })
  assert.strictEqual(result.status, 0, `e2fsck: ${result.stdout}${result.stderr}`)
}

describe("images against a real registry", () => {
  it.effect("pulls a multi-layer image into an ext4 baseline identical to umoci's tree", () =>
    Effect.gen(function*() {
      const pushed = pushSpec(registry, scratch, "features:v1", [{
        layers: featureLayers,
        architecture: hostArchitecture,
        config: {
          Entrypoint: ["/usr/bin/tool"],
          Cmd: ["--help"],
          Env: ["PATH=/usr/bin", "MODE=test"],
          User: "1000:1000",
          WorkingDir: "/home/agent",
          StopSignal: "SIGINT",
          ExposedPorts: { "8080/tcp": {} },
          Labels: { "org.example": "yes" }
        }
      }])
      const inspected = inspectImage(registry, "features:v1") as { Digest: string; Layers: Array<string> }
      const home = freshHome()
      const record = yield* withStore(home, (store) => store.ensure(pushed.ref, { allowGuestSetuid: true }))
      assert.strictEqual(record.digest, inspected.Digest)
      assert.strictEqual(record.digest, pushed.digest)
      assert.deepStrictEqual(record.layers, inspected.Layers)
      assert.strictEqual(record.ref, `${registry.host}/features:v1`)
      assert.deepStrictEqual(record.config.entrypoint, ["/usr/bin/tool"])
      assert.deepStrictEqual(record.config.cmd, ["--help"])
      assert.deepStrictEqual(record.config.env, ["PATH=/usr/bin", "MODE=test"])
      assert.strictEqual(record.config.user, "1000:1000")
      assert.strictEqual(record.config.workingDir, "/home/agent")
      assert.strictEqual(record.config.stopSignal, "SIGINT")
      assert.deepStrictEqual(record.exposedPorts, ["8080/tcp"])
      assert.strictEqual(record.setuidPolicy, "keep")
      const baseline = record.baselinePath!
      assert.strictEqual(NodeFs.statSync(baseline).mode & 0o777, 0o600)
      fsck(baseline)

      const ours = readExt4Tree(baseline, scratch)
      const theirs = umociUnpack(pushed.layout, "latest", NodePath.join(scratch, "bundle-features"))
      assert.deepStrictEqual(compareTrees(ours, theirs), [])
      // Spot checks of what the layers meant.
      assert.isFalse(ours.has("/opt/lower/a"))
      assert.isFalse(ours.has("/data/old1"))
      assert.isFalse(ours.has("/data/sub"))
      assert.isTrue(ours.has("/data/new"))
      assert.strictEqual(ours.get("/usr/bin/su")!.mode, 0o4755)
      assert.strictEqual(ours.get("/home/agent")!.uid, 1000)
      assert.strictEqual(ours.get("/etc/shadow")!.mode, 0)
      assert.strictEqual(ours.get("/run/control")!.type, "fifo")
      const inodes = NodeChild.execFileSync("debugfs", ["-R", "ls -l /usr/bin", baseline], {
        encoding: "utf8"
      })
      const inodeOf = (name: string) => new RegExp(`^\\s*(\\d+)\\s.*\\s${name}\\s*$`, "m").exec(inodes)?.[1]
      assert.strictEqual(inodeOf("su"), inodeOf("su-again"), "hard links share an inode")
      const xattrs = NodeChild.execFileSync("debugfs", ["-R", "ea_list /etc/capable", baseline], {
        encoding: "utf8"
      })
      assert.include(xattrs, "user.comment")
    }))

  it.effect("strips setuid/setgid by default and records what it stripped", () =>
    Effect.gen(function*() {
      const pushed = pushSpec(registry, scratch, "features:strip", [{
        layers: featureLayers,
        architecture: hostArchitecture
      }])
      const record = yield* withStore(freshHome(), (store) => store.ensure(pushed.ref))
      assert.strictEqual(record.setuidPolicy, "strip")
      assert.deepStrictEqual([...record.setuidStripped], ["/usr/bin/su", "/usr/bin/wall"])
      const tree = readExt4Tree(record.baselinePath!, scratch)
      assert.strictEqual(tree.get("/usr/bin/su")!.mode, 0o755)
      assert.strictEqual(tree.get("/usr/bin/su-again")!.mode, 0o755)
      assert.strictEqual(tree.get("/usr/bin/wall")!.mode, 0o755)
    }))

  it.effect("builds a baseline once when two pulls of the same image race in one process", () =>
    Effect.gen(function*() {
      const pushed = pushSpec(registry, scratch, "features:race", [{
        layers: featureLayers,
        architecture: hostArchitecture
      }])
      const home = freshHome()
      let builds = 0
      const [a, b] = yield* withStore(home, (store) =>
        Effect.all([
          store.ensure(pushed.ref, { onProgress: (e) => e.phase === "build-ext4" && builds++ }),
          store.ensure(pushed.ref, { onProgress: (e) => e.phase === "build-ext4" && builds++ })
        ], { concurrency: 2 }))
      assert.strictEqual(builds, 1)
      assert.strictEqual(a.baselinePath, b.baselinePath)
      assert.deepStrictEqual(a.setuidStripped, b.setuidStripped)
      assert.deepStrictEqual(NodeFs.readdirSync(NodePath.join(home, "images", "rootfs")).length, 1)
    }))

  it.effect("resolves a multi-arch index for the requested platform", () =>
    Effect.gen(function*() {
      const archLayer = (
        arch: string
      ) => [[{ path: "etc/", type: "dir" as const }, { path: "etc/arch", content: arch }]]
      const pushed = pushSpec(registry, scratch, "multi:latest", [
        { layers: archLayer("amd64"), architecture: "amd64" },
        { layers: archLayer("arm64"), architecture: "arm64", variant: "v8" }
      ])
      const raw = inspectImage(registry, "multi:latest", true) as {
        manifests: Array<{ digest: string; platform: { architecture: string } }>
      }
      assert.strictEqual(raw.manifests.length, 2)
      const home = freshHome()
      const arm = yield* withStore(home, (store) =>
        store.ensure(pushed.ref, { platform: "linux/arm64", refresh: true }))
      assert.strictEqual(
        arm.digest,
        raw.manifests.find((m) =>
          m.platform.architecture === "arm64"
        )!.digest
      )
      assert.strictEqual(arm.indexDigest, pushed.digest)
      assert.strictEqual(arm.platform?.architecture, "arm64")
      const content = NodeChild.execFileSync("debugfs", ["-R", "cat /etc/arch", arm.baselinePath!], {
        encoding: "utf8"
      })
      assert.strictEqual(content, "arm64")
      const amd = yield* withStore(
        home,
        (store) => store.ensure(pushed.ref, { platform: "linux/amd64", refresh: true })
      )
      assert.strictEqual(amd.digest, raw.manifests.find((m) => m.platform.architecture === "amd64")!.digest)
      const missing = yield* withStore(
        home,
        (store) => store.ensure(pushed.ref, { platform: "linux/riscv64", refresh: true })
      )
        .pipe(Effect.flip)
      assert.strictEqual(missing._tag, "NotFound")
      assert.include(missing.message, "linux/riscv64")
    }))

  it.effect("pulls zstd layers through the zstd binary", () =>
    Effect.gen(function*() {
      const pushed = pushSpec(registry, scratch, "zstd:latest", [{
        layers: [[{ path: "etc/", type: "dir" }, { path: "etc/zstd", content: "compressed with zstd" }], [{
          path: "etc/second",
          content: "x".repeat(100_000)
        }]],
        compression: "zstd",
        architecture: hostArchitecture
      }])
      const record = yield* withStore(freshHome(), (store) => store.ensure(pushed.ref))
      const content = NodeChild.execFileSync("debugfs", ["-R", "cat /etc/zstd", record.baselinePath!], {
        encoding: "utf8"
      })
      assert.strictEqual(content, "compressed with zstd")
    }))

  it.effect("refuses a corrupted blob with a digest error and records nothing", () =>
    Effect.gen(function*() {
      const pushed = pushSpec(registry, scratch, "corrupt:latest", [{
        layers: [[{ path: "etc/", type: "dir" }, { path: "etc/file", content: "y".repeat(5000) }]],
        architecture: hostArchitecture
      }])
      const manifest = inspectImage(registry, "corrupt:latest", true) as { layers: Array<{ digest: string }> }
      const hex = manifest.layers[0]!.digest.slice(7)
      const data = NodePath.join(
        registry.root,
        "data",
        "docker",
        "registry",
        "v2",
        "blobs",
        "sha256",
        hex.slice(0, 2),
        hex,
        "data"
      )
      const bytes = NodeFs.readFileSync(data)
      bytes[bytes.length - 20] = bytes[bytes.length - 20]! ^ 0xff
      NodeFs.writeFileSync(data, bytes)
      const home = freshHome()
      const error = yield* withStore(home, (store) => store.ensure(pushed.ref)).pipe(Effect.flip)
      assert.strictEqual(error._tag, "Permanent")
      assert.include(error.message, "digest mismatch")
      assert.include(error.message, manifest.layers[0]!.digest)
      const list = yield* withStore(home, (store) => store.list)
      assert.strictEqual(list.length, 0)
      assert.deepStrictEqual(NodeFs.readdirSync(NodePath.join(home, "images", "rootfs")), [])
      assert.deepStrictEqual(NodeFs.readdirSync(NodePath.join(home, "tmp")), [])
      assert.deepStrictEqual(leftoverStages(), [])
      assert.isFalse(
        NodeFs.readdirSync(NodePath.join(home, "images", "blobs", "sha256")).some((f) => f.startsWith(hex))
      )
    }))

  it.effect("authenticates with credentials from $REGISTRY_AUTH_FILE", () =>
    Effect.gen(function*() {
      const pushed = pushSpec(secured, scratch, "private/app:1", [{
        layers: [[{ path: "etc/", type: "dir" }, { path: "etc/secret-image", content: "ok" }]],
        architecture: hostArchitecture
      }])
      const home = freshHome()
      const saved = process.env.REGISTRY_AUTH_FILE
      const authFile = NodePath.join(scratch, "auth.json")
      NodeFs.writeFileSync(authFile, JSON.stringify({ auths: {} }))
      process.env.REGISTRY_AUTH_FILE = authFile
      const denied = yield* withStore(home, (store) => store.ensure(pushed.ref)).pipe(Effect.flip)
      assert.strictEqual(denied._tag, "PolicyDenied")
      NodeFs.writeFileSync(
        authFile,
        JSON.stringify({
          auths: { [secured.host]: { auth: Buffer.from("agent:wrong").toString("base64") } }
        })
      )
      const rejected = yield* withStore(home, (store) => store.ensure(pushed.ref)).pipe(Effect.flip)
      assert.strictEqual(rejected._tag, "PolicyDenied")
      assert.include(rejected.message, "rejected")
      NodeFs.writeFileSync(
        authFile,
        JSON.stringify({
          auths: { [`http://${secured.host}`]: { auth: Buffer.from("agent:s3cret-pass").toString("base64") } }
        })
      )
      const record = yield* withStore(home, (store) => store.ensure(pushed.ref)).pipe(
        Effect.ensuring(Effect.sync(() => {
          if (saved === undefined) delete process.env.REGISTRY_AUTH_FILE
          else process.env.REGISTRY_AUTH_FILE = saved
        }))
      )
      assert.strictEqual(record.ref, `${secured.host}/private/app:1`)
    }))

  it.live("gets bearer tokens, follows blob redirects without leaking credentials, and resumes cut transfers", () =>
    Effect.gen(function*() {
      const pushed = pushSpec(registry, scratch, "tokens/app:1", [{
        layers: [[{ path: "etc/", type: "dir" }, {
          path: "etc/big",
          content: NodeFs.readFileSync("/bin/busybox")
        }], [{
          path: "etc/second",
          content: Buffer.alloc(300_000, 3)
        }]],
        architecture: hostArchitecture
      }])
      const proxy = yield* Effect.promise(() =>
        startTokenProxy(registry, { login: { username: "hub", password: "token-pass" }, cutAfter: 32 * 1024 })
      )
      const saved = process.env.REGISTRY_AUTH_FILE
      const authFile = NodePath.join(scratch, "token-auth.json")
      NodeFs.writeFileSync(
        authFile,
        JSON.stringify({
          auths: { [proxy.host]: { username: "hub", password: "token-pass" } }
        })
      )
      process.env.REGISTRY_AUTH_FILE = authFile
      const ref = `${proxy.host}/tokens/app:1`
      const record = yield* withStore(freshHome(), (store) => store.ensure(ref)).pipe(
        Effect.ensuring(Effect.promise(() => proxy.stop())),
        Effect.ensuring(Effect.sync(() => {
          if (saved === undefined) delete process.env.REGISTRY_AUTH_FILE
          else process.env.REGISTRY_AUTH_FILE = saved
        }))
      )
      assert.strictEqual(record.digest, pushed.digest)
      assert.isAtLeast(proxy.tokens.length, 1)
      assert.strictEqual(proxy.tokens[0]!.scope, "repository:tokens/app:pull")
      assert.strictEqual(proxy.tokens[0]!.basic, `Basic ${Buffer.from("hub:token-pass").toString("base64")}`)
      assert.deepStrictEqual(proxy.leakedAuthorization, [])
      // The busybox layer (the only one over 32 KiB compressed) was cut there and resumed from there.
      assert.deepStrictEqual(proxy.ranges, ["bytes=32768-"])
      const content = NodeChild.execFileSync("debugfs", ["-R", "cat /etc/big", record.baselinePath!], {
        maxBuffer: 1 << 26,
        stdio: "pipe"
      })
      assert.isTrue(content.equals(NodeFs.readFileSync("/bin/busybox")))
    }))

  it.live("gets anonymous bearer tokens when it has no credentials", () =>
    Effect.gen(function*() {
      const pushed = pushSpec(registry, scratch, "anonymous/app:1", [{
        layers: [[{ path: "etc/", type: "dir" }, { path: "etc/public", content: "anyone" }]],
        architecture: hostArchitecture
      }])
      const proxy = yield* Effect.promise(() => startTokenProxy(registry))
      const record = yield* withStore(freshHome(), (store) => store.ensure(`${proxy.host}/anonymous/app:1`))
        .pipe(
          Effect.ensuring(Effect.promise(() => proxy.stop()))
        )
      assert.strictEqual(record.digest, pushed.digest)
      assert.strictEqual(proxy.tokens[0]?.basic, undefined)
      assert.strictEqual(proxy.tokens[0]?.scope, "repository:anonymous/app:pull")
    }))

  it.effect("clones workspace disks from the baseline, grows them, and never re-extracts", () =>
    Effect.gen(function*() {
      const busybox = pushBusyboxImage(registry, scratch)
      const home = freshHome()
      const record = yield* withStore(home, (store) => store.ensure(busybox.ref))
      assert.deepStrictEqual(record.config.cmd, ["/bin/sh"])
      assert.deepStrictEqual(record.config.env, ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
      const tree = readExt4Tree(record.baselinePath!, scratch)
      assert.strictEqual(tree.get("/bin/sh")?.link, "/bin/busybox")
      assert.strictEqual(tree.get("/tmp")?.mode, 0o1777)
      const one = NodePath.join(home, "ws-one.ext4")
      const two = NodePath.join(home, "ws-two.ext4")
      yield* withStore(
        home,
        (store) => Effect.zipRight(store.cloneRootfs(record, one), store.cloneRootfs(record, two, 1024))
      )
      assert.isTrue(NodeFs.readFileSync(one).equals(NodeFs.readFileSync(record.baselinePath!)))
      assert.strictEqual(NodeFs.statSync(two).size, 1024 * 1024 * 1024)
      // Sparse: the copy occupies about what the content needs, not its apparent size.
      assert.isBelow(NodeFs.statSync(one).blocks * 512, NodeFs.statSync(one).size / 2)
      fsck(two)
      const tooSmall = yield* withStore(
        home,
        (store) => store.cloneRootfs(record, NodePath.join(home, "small"), 1)
      )
        .pipe(Effect.flip)
      assert.strictEqual(tooSmall._tag, "ResourceExhausted")
      // A second ensure is answered from the store (the registry is not needed).
      const again = yield* withStore(home, (store) => store.ensure(busybox.ref))
      assert.strictEqual(again.baselinePath, record.baselinePath)
    }))

  it.effect("fails with the size it needs when --size-mib is too small", () =>
    Effect.gen(function*() {
      const pushed = pushSpec(registry, scratch, "big:latest", [{
        layers: [[{ path: "blob", content: NodeFs.readFileSync("/bin/busybox") }, {
          path: "blob2",
          content: Buffer.alloc(40 * 1024 * 1024, 7)
        }]],
        architecture: hostArchitecture
      }])
      const home = freshHome()
      const error = yield* withStore(home, (store) => store.ensure(pushed.ref, { baselineSizeMiB: 20 })).pipe(
        Effect.flip
      )
      assert.strictEqual(error._tag, "ResourceExhausted")
      assert.match(error.message, /needs about \d+ MiB/)
      assert.deepStrictEqual(NodeFs.readdirSync(NodePath.join(home, "images", "rootfs")), [])
      // The size named in the error is enough.
      const needed = Number(/needs about (\d+) MiB/.exec(error.message)![1])
      const sized = yield* withStore(home, (store) => store.ensure(pushed.ref, { baselineSizeMiB: needed }))
      assert.strictEqual(sized.sizeBytes, needed * 1024 * 1024)
      fsck(sized.baselinePath!)
    }))

  it.effect("leaves no record and no stray files when interrupted mid-build", () =>
    Effect.gen(function*() {
      const pushed = pushSpec(registry, scratch, "interrupt:latest", [
        { layers: busyboxLayers(), architecture: hostArchitecture }
      ])
      const home = freshHome()
      const started = yield* Deferred.make<void>()
      const fiber = yield* withStore(home, (store) =>
        store.ensure(pushed.ref, {
          onProgress: (event) => {
            if (event.phase === "extract") Effect.runSync(Deferred.succeed(started, undefined))
          }
        })).pipe(Effect.fork)
      yield* Deferred.await(started)
      yield* Fiber.interrupt(fiber)
      const list = yield* withStore(home, (store) => store.list)
      assert.strictEqual(list.length, 0)
      assert.deepStrictEqual(NodeFs.readdirSync(NodePath.join(home, "images", "rootfs")), [])
      assert.deepStrictEqual(NodeFs.readdirSync(NodePath.join(home, "tmp")), [])
      assert.deepStrictEqual(leftoverStages(), [])
    }))

  it.effect("removes work directories and partial downloads of dead processes on the next pull", () =>
    Effect.gen(function*() {
      const pushed = pushSpec(registry, scratch, "stale:latest", [{
        layers: [[{ path: "etc/", type: "dir" }, { path: "etc/x", content: "x" }]],
        architecture: hostArchitecture
      }])
      const home = freshHome()
      // A pid that cannot be alive (above the kernel's pid_max).
      const dead = 4_194_305
      const staleWork = NodePath.join(home, "tmp", `rootfs-build-${dead}-abcdef`)
      const stalePartial = NodePath.join(
        home,
        "images",
        "blobs",
        "sha256",
        `${"0".repeat(64)}.partial-${dead}-abcd`
      )
      const liveWork = NodePath.join(home, "tmp", `rootfs-build-${process.pid}-keepme`)
      for (const dir of [NodePath.join(staleWork, "stage"), NodePath.dirname(stalePartial), liveWork]) {
        NodeFs.mkdirSync(dir, { recursive: true })
      }
      NodeFs.writeFileSync(stalePartial, "half a blob")
      yield* withStore(home, (store) => store.ensure(pushed.ref))
      assert.isFalse(NodeFs.existsSync(staleWork))
      assert.isFalse(NodeFs.existsSync(stalePartial))
      assert.isTrue(NodeFs.existsSync(liveWork), "a live process's work directory is left alone")
      NodeFs.rmSync(liveWork, { recursive: true })
    }))

  it.effect("tags, removes with --purge only unused files, and prunes", () =>
    Effect.gen(function*() {
      const busybox = pushBusyboxImage(registry, scratch, "bb2:latest")
      const home = freshHome()
      yield* withStore(home, (store) =>
        Effect.gen(function*() {
          const record = yield* store.ensure(busybox.ref)
          const tagged = yield* store.tag(busybox.ref, "localhost/mine:1")
          assert.strictEqual(tagged.ref, "localhost/mine:1")
          assert.strictEqual(tagged.digest, record.digest)
          assert.strictEqual((yield* store.inspect(record.digest.slice(7, 19))).digest, record.digest)
          const first = yield* store.remove([busybox.ref], { purge: true })
          assert.deepStrictEqual(first.removed, [busybox.ref])
          assert.deepStrictEqual(first.deleted, [])
          assert.include(first.kept, record.baselinePath!)
          assert.isTrue(NodeFs.existsSync(record.baselinePath!))
          const second = yield* store.remove(["localhost/mine:1"], { purge: true })
          assert.include(second.deleted, record.baselinePath!)
          assert.isFalse(NodeFs.existsSync(record.baselinePath!))
          assert.strictEqual((yield* store.list).length, 0)
          const missing = yield* store.remove(["nothing:here"]).pipe(Effect.flip)
          assert.strictEqual(missing._tag, "NotFound")
          // prune: a record whose baseline vanished goes, an orphan file goes.
          const again = yield* store.ensure(busybox.ref)
          NodeFs.rmSync(again.baselinePath!)
          NodeFs.writeFileSync(NodePath.join(home, "images", "rootfs", "orphan.ext4"), "x")
          const pruned = yield* store.prune()
          assert.deepStrictEqual(pruned.removed, [busybox.ref])
          assert.isTrue(pruned.deleted.some((f) => f.endsWith("orphan.ext4")))
        }))
    }))

  it.effect("imports OCI layouts, OCI archives and docker archives", () =>
    Effect.gen(function*() {
      const pushed = pushSpec(registry, scratch, "importme:latest", [{
        layers: [[{ path: "etc/", type: "dir" }, { path: "etc/imported", content: "yes" }]],
        architecture: hostArchitecture,
        config: { Cmd: ["/bin/true"] }
      }])
      const ociArchive = NodePath.join(scratch, "import.oci.tar")
      const dockerArchive = NodePath.join(scratch, "import.docker.tar")
      skopeo(["copy", "--quiet", `oci:${pushed.layout}:latest`, `oci-archive:${ociArchive}:latest`])
      skopeo([
        "copy",
        "--quiet",
        `oci:${pushed.layout}:latest`,
        `docker-archive:${dockerArchive}:example.com/imported:v2`
      ])
      const home = freshHome()
      yield* withStore(home, (store) =>
        Effect.gen(function*() {
          const fromLayout = yield* store.importImage(pushed.layout, { tag: "localhost/from-layout:1" })
          assert.strictEqual(fromLayout.digest, pushed.digest)
          assert.strictEqual(fromLayout.source, "oci-layout")
          const fromArchive = yield* store.importImage(ociArchive, { tag: "localhost/from-archive:1" })
          assert.strictEqual(fromArchive.digest, pushed.digest)
          assert.strictEqual(fromArchive.source, "oci-archive")
          const fromDocker = yield* store.importImage(dockerArchive)
          assert.strictEqual(fromDocker.ref, "example.com/imported:v2")
          assert.strictEqual(fromDocker.source, "docker-archive")
          assert.deepStrictEqual(fromDocker.config.cmd, ["/bin/true"])
          for (const record of [fromLayout, fromArchive, fromDocker]) {
            const content = NodeChild.execFileSync("debugfs", [
              "-R",
              "cat /etc/imported",
              record.baselinePath!
            ], {
              encoding: "utf8"
            })
            assert.strictEqual(content, "yes")
          }
          const viaEnsure = yield* store.ensure(`oci:${pushed.layout}`)
          assert.strictEqual(viaEnsure.digest, pushed.digest)
        }))
    }))

  it.effect("reports an unknown image as not found", () =>
    Effect.gen(function*() {
      const error = yield* withStore(
        freshHome(),
        (store) => store.ensure(`${registry.host}/does-not/exist:1`)
      ).pipe(
        Effect.flip
      )
      assert.strictEqual(error._tag, "NotFound")
      const exit = yield* withStore(freshHome(), (store) => store.ensure("Not A Ref")).pipe(Effect.exit)
      assert.isTrue(Exit.isFailure(exit))
    }))
})

describe("building without root", () => {
  it.effect("keeps owners, special bits, devices and xattrs when the builder is not root", () =>
    Effect.gen(function*() {
      requireTool("setpriv", "util-linux")
      const layout = NodePath.join(scratch, "nonroot-layout")
      writeOciLayout(layout, [{
        layers: [[
          { path: "etc/", type: "dir" },
          { path: "etc/root-owned", content: "root" },
          { path: "home/", type: "dir" },
          { path: "home/user/", type: "dir", uid: 1000, gid: 1000, mode: 0o700 },
          { path: "home/user/file", content: "mine", uid: 1000, gid: 1000, mode: 0o600 },
          { path: "usr/", type: "dir" },
          { path: "usr/su", content: "su", mode: 0o4755 },
          { path: "etc/unreadable", content: "secret", mode: 0o000 },
          { path: "dev/", type: "dir" },
          { path: "dev/null", type: "char", devmajor: 1, devminor: 3, mode: 0o666 },
          { path: "etc/attr", content: "x", xattrs: { "user.origin": "layer" } }
        ]],
        architecture: hostArchitecture
      }])
      const state = NodePath.join(scratch, "nonroot-state")
      NodeFs.mkdirSync(state, { mode: 0o700 })
      NodeFs.chmodSync(scratch, 0o755)
      NodeChild.execFileSync("chown", ["-R", "65534:65534", state, layout])
      const bundle = NodePath.join(process.cwd(), ".cache", "import-as-user.mjs")
      yield* Effect.promise(() =>
        esbuild.build({
          entryPoints: [NodePath.join(process.cwd(), "test", "images", "fixtures", "import-as-user.ts")],
          bundle: true,
          platform: "node",
          format: "esm",
          packages: "external",
          outfile: bundle,
          logLevel: "error"
        })
      )
      const out = NodeChild.execFileSync(
        "setpriv",
        ["--reuid=65534", "--regid=65534", "--clear-groups", process.execPath, bundle, layout, state],
        { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }
      )
      const result = JSON.parse(out) as { uid: number; baseline: string }
      assert.strictEqual(result.uid, 65534)
      const tree = readExt4Tree(result.baseline, scratch)
      assert.deepStrictEqual(tree.get("/etc/root-owned"), {
        type: "file",
        mode: 0o644,
        uid: 0,
        gid: 0,
        sha256: "4813494d137e1631bba301d5acab6e7bb7aa74ce1185d456565ef51d737677b2"
      })
      assert.strictEqual(tree.get("/")?.uid ?? 0, 0)
      assert.include(tree.get("/home/user"), { uid: 1000, gid: 1000, mode: 0o700 })
      assert.include(tree.get("/home/user/file"), { uid: 1000, gid: 1000, mode: 0o600 })
      assert.include(tree.get("/usr/su"), { uid: 0, mode: 0o4755 })
      assert.include(tree.get("/etc/unreadable"), { uid: 0, mode: 0 })
      assert.include(tree.get("/dev/null"), { type: "char", mode: 0o666, uid: 0 })
      const root = NodeChild.execFileSync("debugfs", ["-R", "stat /", result.baseline], {
        encoding: "utf8",
        stdio: "pipe"
      })
      assert.match(root, /User:\s+0\s+Group:\s+0/)
      const attr = NodeChild.execFileSync("debugfs", ["-R", "ea_list /etc/attr", result.baseline], {
        encoding: "utf8",
        stdio: "pipe"
      })
      assert.include(attr, "user.origin")
      fsck(result.baseline)
    }))
})

describe("image commands", () => {
  /** Runs `microagent image …` in-process, capturing stdout. */
  const runImage = (args: ReadonlyArray<string>, stateDir: string) =>
    Effect.gen(function*() {
      const chunks: Array<string> = []
      const write = process.stdout.write.bind(process.stdout)
      const cli = Command.run(imageCommand, { name: "microagent", version: "test" })
      const exit = yield* Effect.acquireUseRelease(
        Effect.sync(() => {
          process.stdout.write = ((chunk: string | Uint8Array, ...rest: Array<unknown>) => {
            chunks.push(typeof chunk === "string" ? chunk : Buffer.from(chunk).toString())
            const callback = rest.find((r) => typeof r === "function") as (() => void) | undefined
            callback?.()
            return true
          }) as typeof process.stdout.write
        }),
        () =>
          cli(["node", "microagent", ...args.slice(1)]).pipe(
            Effect.provideService(Invocation, {
              json: true,
              stateDir,
              backend: undefined,
              noColor: true,
              guestArgv: []
            }),
            Effect.provide(NodeContext.layer),
            Effect.exit
          ),
        () => Effect.sync(() => (process.stdout.write = write))
      )
      return { exit, stdout: chunks.join("") }
    })

  it.effect("pull, list, inspect, tag, rm and prune through the CLI with JSON output", () =>
    Effect.gen(function*() {
      const busybox = pushBusyboxImage(registry, scratch, "cli/busybox:1")
      const state = freshHome()
      const pulled = yield* runImage(["image", "pull", busybox.ref], state)
      assert.isTrue(Exit.isSuccess(pulled.exit), String(pulled.exit))
      const record = JSON.parse(pulled.stdout) as {
        ref: string
        digest: string
        config: { cmd: Array<string> }
      }
      assert.strictEqual(record.digest, busybox.digest)
      assert.deepStrictEqual(record.config.cmd, ["/bin/sh"])
      const listed = JSON.parse((yield* runImage(["image", "ls"], state)).stdout) as {
        images: Array<{ ref: string }>
      }
      assert.deepStrictEqual(listed.images.map((i) => i.ref), [busybox.ref])
      const inspected = JSON.parse(
        (yield* runImage(["image", "inspect", busybox.digest.slice(7, 20)], state)).stdout
      ) as {
        ref: string
      }
      assert.strictEqual(inspected.ref, busybox.ref)
      yield* runImage(["image", "tag", busybox.ref, "localhost/cli:2"], state)
      const removed = JSON.parse(
        (yield* runImage(["image", "rm", "--purge", busybox.ref], state)).stdout
      ) as {
        removed: Array<string>
        kept: Array<string>
      }
      assert.deepStrictEqual(removed.removed, [busybox.ref])
      assert.strictEqual(removed.kept.length > 0, true)
      const pruned = JSON.parse((yield* runImage(["image", "prune", "--purge"], state)).stdout) as {
        removed: Array<string>
      }
      assert.deepStrictEqual(pruned.removed, ["localhost/cli:2"])
      const missing = yield* runImage(["image", "inspect", "nothing:here"], state)
      assert.isTrue(Exit.isFailure(missing.exit))
    }))

  it.effect("--help opens no database", () =>
    Effect.gen(function*() {
      const state = freshHome()
      yield* runImage(["image", "pull", "--help"], state)
      assert.isFalse(NodeFs.existsSync(NodePath.join(state, "state.db")))
    }))
})

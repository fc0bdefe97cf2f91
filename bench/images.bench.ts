/**
 * Image pipeline benchmark. Prints one JSON object on stdout:
 * - pull + ext4 build of a ~50 MB multi-layer image from a loopback registry by microagent, against
 *   `skopeo copy` + `umoci unpack` + `mke2fs -d` of the same image in the same run (ratio, target <= 1.0);
 * - the time to give a second workspace its private rootfs from the cached baseline (target <= 100 ms).
 * Bundle with esbuild (`--bundle --platform=node --packages=external`) and run with node.
 */
import { Effect, Layer } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { makeImageStore } from "../src/layers/image/ImageStoreLive.ts"
import { imageDependencies } from "../src/layers/image/Stack.ts"
import type { ImageStoreAdmin } from "../src/services/ImageStore.ts"
import { hostArchitecture, pushSpec, type TarSpec } from "../test/support/images.ts"
import { skopeo, startRegistry } from "../test/support/registry.ts"

const budget = 50 * 1024 * 1024

/** Real files from the host (a Python stdlib, zoneinfo): many small files, some large, links. */
const hostTree = (root: string, prefix: string, limit: number): { specs: Array<TarSpec>; bytes: number } => {
  const specs: Array<TarSpec> = []
  let bytes = 0
  const walk = (dir: string, rel: string) => {
    specs.push({ path: `${rel}/`, type: "dir", mode: 0o755 })
    for (const name of NodeFs.readdirSync(dir).sort()) {
      if (bytes >= limit) return
      const full = NodePath.join(dir, name)
      const path = `${rel}/${name}`
      const st = NodeFs.lstatSync(full)
      if (st.isDirectory()) walk(full, path)
      else if (st.isSymbolicLink()) specs.push({ path, type: "symlink", linkname: NodeFs.readlinkSync(full) })
      else if (st.isFile()) {
        specs.push({ path, content: NodeFs.readFileSync(full), mode: st.mode & 0o777 })
        bytes += st.size
      }
    }
  }
  const parts = prefix.split("/")
  for (let i = 1; i < parts.length; i++) specs.push({ path: `${parts.slice(0, i).join("/")}/`, type: "dir" })
  walk(root, prefix)
  return { specs, bytes }
}

const pickSource = (candidates: ReadonlyArray<string>) => candidates.find((c) => NodeFs.existsSync(c))

const time = async <A>(f: () => Promise<A> | A): Promise<{ ms: number; value: A }> => {
  const start = process.hrtime.bigint()
  const value = await f()
  return { ms: Number(process.hrtime.bigint() - start) / 1e6, value }
}

const run = (cmd: string, args: ReadonlyArray<string>) =>
  NodeChild.execFileSync(cmd, args, { stdio: ["ignore", "pipe", "pipe"], maxBuffer: 1 << 26 })

const main = async () => {
  const scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-bench-images-"))
  const registry = await startRegistry()
  try {
    const python = pickSource([
      "/usr/lib/python3.11",
      "/usr/lib/python3.12",
      "/usr/lib/python3",
      "/usr/share/perl"
    ])
    const zone = pickSource(["/usr/share/zoneinfo", "/usr/share/doc"])
    if (python === undefined || zone === undefined) {
      throw new Error("no host tree to build the benchmark image from")
    }
    const small = hostTree(zone, "usr/share/zoneinfo", 8 * 1024 * 1024)
    const large = hostTree(python, "usr/lib/python", budget - small.bytes)
    const layers: Array<Array<TarSpec>> = [
      small.specs,
      large.specs.slice(0, Math.floor(large.specs.length / 2)),
      large.specs.slice(Math.floor(large.specs.length / 2)),
      [{ path: "usr/share/zoneinfo/.wh.Europe", content: "" }, { path: "etc/", type: "dir" }, {
        path: "etc/bench",
        content: "bench\n"
      }]
    ]
    // Parent directories must precede children in every layer that needs them.
    for (const layer of layers.slice(1, 3)) {
      layer.unshift({ path: "usr/", type: "dir" }, { path: "usr/lib/", type: "dir" })
    }
    const pushed = pushSpec(registry, scratch, "bench/python:latest", [{
      layers,
      architecture: hostArchitecture
    }])
    const compressedBytes = NodeFs.readdirSync(NodePath.join(pushed.layout, "blobs", "sha256"))
      .reduce((sum, f) => sum + NodeFs.statSync(NodePath.join(pushed.layout, "blobs", "sha256", f)).size, 0)

    const withStore = <A, E>(home: string, f: (store: ImageStoreAdmin) => Effect.Effect<A, E>) =>
      Effect.runPromise(
        Effect.flatMap(makeImageStore, f).pipe(Effect.provide(imageDependencies(home).pipe(Layer.orDie)))
      )

    const oursRuns: Array<number> = []
    const baselineRuns: Array<number> = []
    let sizeBytes = 0
    let lastHome = ""
    for (let round = 0; round < 2; round++) {
      const home = NodePath.join(scratch, `home-${round}`)
      const ours = await time(() => withStore(home, (store) => store.ensure(pushed.ref)))
      oursRuns.push(ours.ms)
      sizeBytes = ours.value.sizeBytes
      lastHome = home

      const work = NodePath.join(scratch, `baseline-${round}`)
      NodeFs.mkdirSync(work)
      const baseline = await time(() => {
        skopeo([
          "copy",
          "--quiet",
          "--src-tls-verify=false",
          `docker://${pushed.ref}`,
          `oci:${NodePath.join(work, "layout")}:latest`
        ])
        run("umoci", [
          "unpack",
          ...(process.getuid?.() === 0 ? [] : ["--rootless"]),
          "--image",
          `${NodePath.join(work, "layout")}:latest`,
          NodePath.join(work, "bundle")
        ])
        const image = NodePath.join(work, "rootfs.ext4")
        NodeFs.writeFileSync(image, "")
        NodeFs.truncateSync(image, sizeBytes)
        run("mke2fs", [
          "-q",
          "-F",
          "-t",
          "ext4",
          "-b",
          "4096",
          "-d",
          NodePath.join(work, "bundle", "rootfs"),
          image
        ])
      })
      baselineRuns.push(baseline.ms)
      NodeFs.rmSync(work, { recursive: true, force: true })
    }

    const cloneRuns: Array<number> = []
    const record = await withStore(lastHome, (store) => store.inspect(pushed.ref))
    for (let i = 0; i < 5; i++) {
      const destination = NodePath.join(scratch, `workspace-${i}.ext4`)
      const cloned = await time(() => withStore(lastHome, (store) => store.cloneRootfs(record, destination)))
      cloneRuns.push(cloned.ms)
      NodeFs.rmSync(destination)
    }
    // The clone alone, without opening the store (what `create` pays once its layers are up).
    const direct: Array<number> = []
    await withStore(lastHome, (store) =>
      Effect.gen(function*() {
        for (let i = 0; i < 5; i++) {
          const destination = NodePath.join(scratch, `direct-${i}.ext4`)
          const start = process.hrtime.bigint()
          yield* store.cloneRootfs(record, destination)
          direct.push(Number(process.hrtime.bigint() - start) / 1e6)
          NodeFs.rmSync(destination)
        }
      }))

    const min = (xs: ReadonlyArray<number>) => Math.min(...xs)
    const round1 = (x: number) => Math.round(x * 10) / 10
    const result = {
      bench: "images",
      image: {
        layers: layers.length,
        entries: layers.reduce((n, l) => n + l.length, 0),
        uncompressed_bytes: small.bytes + large.bytes,
        compressed_bytes: compressedBytes,
        rootfs_bytes: sizeBytes
      },
      pull_build_ms: round1(min(oursRuns)),
      baseline_skopeo_umoci_mke2fs_ms: round1(min(baselineRuns)),
      ratio: Math.round((min(oursRuns) / min(baselineRuns)) * 1000) / 1000,
      ratio_target: 1.0,
      clone_ms: round1(min(direct)),
      clone_with_store_open_ms: round1(min(cloneRuns)),
      clone_target_ms: 100,
      runs: {
        pull_build_ms: oursRuns.map(round1),
        baseline_ms: baselineRuns.map(round1),
        clone_ms: direct.map(round1)
      }
    }
    process.stdout.write(`${JSON.stringify(result)}\n`)
  } finally {
    await registry.stop()
    NodeFs.rmSync(scratch, { recursive: true, force: true })
  }
}

main().catch((error) => {
  process.stderr.write(`images bench failed: ${error instanceof Error ? error.stack : String(error)}\n`)
  process.exitCode = 1
})

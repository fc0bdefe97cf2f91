import { afterAll, assert, describe, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodeZlib from "node:zlib"
import { detectCompression, isBzImage, parseBzImage } from "../../src/layers/kernel/internal/bzimage.ts"
import {
  EM_X86_64,
  hasPvhEntry,
  isElf,
  linuxVersionIn,
  parseElf
} from "../../src/layers/kernel/internal/elf.ts"
import { decodeLz4Legacy } from "../../src/layers/kernel/internal/lz4.ts"
import { unpackKernel } from "../../src/layers/kernel/internal/unpack.ts"
import { cleanupTempDirs, debianKernelTree, requireTool, tempDir } from "../support/kernel.ts"
import { fakeBzImage, fakeVmlinux } from "./fixtures.ts"

const sha = (bytes: Uint8Array) => NodeCrypto.createHash("sha256").update(bytes).digest("hex")
const scratch = () => tempDir("microagent-unpack-")

/** Compresses with a host tool, as the kernel build would. */
const compress = (command: string, args: ReadonlyArray<string>, input: Uint8Array) =>
  NodeChild.execFileSync(command, [...args], { input, maxBuffer: 64 * 1024 * 1024 })

afterAll(cleanupTempDirs)

describe("bzImage on the Debian cloud kernel", () => {
  const tree = debianKernelTree()
  const image = NodeFs.readFileSync(tree.bzImage)

  it("parses the setup header and finds an LZ4 payload and the version", () => {
    assert.isTrue(isBzImage(image))
    const parsed = parseBzImage(image)
    assert.isAtLeast(parsed.protocol, 0x208)
    assert.strictEqual(parsed.compression, "lz4")
    assert.strictEqual(parsed.version, tree.version)
    assert.strictEqual(parsed.setupBytes, ((image[0x1f1] || 4) + 1) * 512)
  })

  it("decodes the LZ4 legacy payload byte-for-byte like the lz4 tool, to an ELF with a PVH note", () => {
    requireTool("lz4", "lz4")
    const payload = parseBzImage(image).payload
    const ours = decodeLz4Legacy(payload)
    // lz4 exits 1 on the trailing size word but writes the complete output.
    const result = NodeChild.spawnSync("lz4", ["-dc"], { input: payload, maxBuffer: 256 * 1024 * 1024 })
    assert.strictEqual(sha(ours), sha(result.stdout))
    // The kernel build's trailing word is the uncompressed size.
    assert.strictEqual(ours.length, Buffer.from(payload).readUInt32LE(payload.length - 4))
    const elf = parseElf(ours)
    assert.strictEqual(elf.machine, EM_X86_64)
    assert.isTrue(hasPvhEntry(elf))
    assert.strictEqual(linuxVersionIn(ours), tree.version)
  })

  it.effect("unpacks it to the bootable vmlinux", () =>
    Effect.gen(function*() {
      const kernel = yield* unpackKernel(image, scratch())
      assert.strictEqual(kernel.format, "elf")
      assert.strictEqual(kernel.arch, "x86_64")
      assert.strictEqual(kernel.version, tree.version)
      assert.isTrue(isElf(kernel.bytes))
    }), 60_000)
})

describe("bzImage payload formats", () => {
  const vmlinux = fakeVmlinux()
  const formats: ReadonlyArray<readonly [string, () => Uint8Array]> = [
    ["gzip", () => NodeZlib.gzipSync(vmlinux)],
    ["xz", () => {
      requireTool("xz", "xz-utils")
      return compress("xz", ["--check=crc32", "-c"], vmlinux)
    }],
    ["zstd", () => {
      requireTool("zstd", "zstd")
      return compress("zstd", ["-q", "-c"], vmlinux)
    }],
    ["lz4", () => {
      requireTool("lz4", "lz4")
      return compress("lz4", ["-l", "-q", "-c"], vmlinux) // -l: the legacy frame the kernel uses
    }]
  ]
  for (const [name, make] of formats) {
    it.effect(`unpacks a ${name} payload (with the trailing size word) to the ELF`, () =>
      Effect.gen(function*() {
        const payload = make()
        assert.strictEqual(detectCompression(payload), name)
        const kernel = yield* unpackKernel(fakeBzImage(payload, vmlinux.length), scratch())
        assert.strictEqual(sha(kernel.bytes), sha(vmlinux))
        assert.strictEqual(kernel.version, "9.9.9-test")
      }))
  }

  it.effect("takes an ELF vmlinux as it is, and refuses one without a PVH note or a non-kernel", () =>
    Effect.gen(function*() {
      const kernel = yield* unpackKernel(vmlinux, scratch())
      assert.strictEqual(kernel.version, "9.9.9-test")
      assert.strictEqual(sha(kernel.bytes), sha(vmlinux))
      const noPvh = yield* Effect.exit(unpackKernel(fakeVmlinux({ pvh: false }), scratch()))
      assert.isTrue(Exit.isFailure(noPvh))
      assert.include(JSON.stringify(noPvh), "PVH")
      const junk = yield* Effect.exit(unpackKernel(Buffer.from("not a kernel at all"), scratch()))
      assert.isTrue(Exit.isFailure(junk))
    }))

  it("rejects a truncated LZ4 stream", () => {
    const payload = compress("lz4", ["-l", "-q", "-c"], vmlinux)
    const cut = payload.subarray(0, payload.length - 100)
    // The last block no longer fits, so it is taken for the trailer: output is short, never garbage.
    const out = (() => {
      try {
        return decodeLz4Legacy(cut)
      } catch {
        return undefined
      }
    })()
    assert.isTrue(out === undefined || out.length < vmlinux.length)
  })
})

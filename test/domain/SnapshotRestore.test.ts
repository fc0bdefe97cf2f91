import { Either } from "effect"
import { assert, describe, it } from "vitest"
import { SnapshotManifest } from "../../src/domain/Snapshot.ts"
import { parseSnapshotRef, restoreRefusal } from "../../src/domain/SnapshotRestore.ts"
import { Resources } from "../../src/domain/Workspace.ts"

const manifest = (overrides: Partial<ConstructorParameters<typeof SnapshotManifest>[0]> = {}) =>
  new SnapshotManifest({
    formatVersion: 1,
    workspace: "w",
    tag: "t1",
    kind: "memory",
    createdAt: "2026-12-04T00:00:00Z",
    sourceState: "running",
    backend: "qemu",
    image: { ref: "busybox" },
    kernelSha256: "a".repeat(64),
    resources: new Resources({ memoryMiB: 512, cpus: 2 }),
    hostname: "w",
    network: "user",
    ports: [],
    secretsPurged: true,
    secretNames: [],
    files: { disk: "disk.img", state: "vm.state" },
    allocatedBytes: 1,
    diskBytes: 1,
    ...overrides
  })

const target = { backend: "qemu", kernelSha256: "a".repeat(64), memoryMiB: 512 }
const refusal = (m: SnapshotManifest, t = target) => Either.flip(restoreRefusal(m, t)).pipe(Either.getOrThrow)

describe("parseSnapshotRef", () => {
  it("splits WORKSPACE:TAG", () => {
    assert.deepStrictEqual(Either.getOrThrow(parseSnapshotRef("dev:before-upgrade")), {
      workspace: "dev",
      tag: "before-upgrade"
    })
  })
  it("refuses what is not a reference", () => {
    for (const text of ["dev", ":t", "dev:", "dev:bad tag"]) {
      assert.strictEqual(Either.flip(parseSnapshotRef(text)).pipe(Either.getOrThrow).kind, "permanent", text)
    }
  })
})

describe("restoreRefusal", () => {
  it("accepts a matching memory snapshot and any disk snapshot on the same backend", () => {
    assert.isTrue(Either.isRight(restoreRefusal(manifest(), target)))
    const disk = manifest({ kind: "disk", files: { disk: "disk.img" } })
    assert.isTrue(Either.isRight(restoreRefusal(disk, { ...target, memoryMiB: 1024, kernelSha256: "b" })))
  })
  it("refuses another backend, another kernel, another memory size and secrets, each classified", () => {
    assert.strictEqual(refusal(manifest(), { ...target, backend: "fake" }).kind, "unsupported")
    const kernel = refusal(manifest(), { ...target, kernelSha256: "b".repeat(64) })
    assert.strictEqual(kernel.kind, "unsupported")
    assert.match(kernel.message, /kernel/)
    const memory = refusal(manifest(), { ...target, memoryMiB: 256 })
    assert.strictEqual(memory.kind, "conflict")
    assert.match(memory.remediation, /512 MiB/)
    assert.strictEqual(refusal(manifest({ secretsPurged: false })).kind, "unsupported")
  })
})

import { assert, describe, it } from "vitest"
import { templateKey, type TemplateShape, type WarmFacts, warmRefusal } from "../../src/domain/Template.ts"

const shape: TemplateShape = {
  backend: "qemu",
  imageDigest: `sha256:${"a".repeat(64)}`,
  diskBytes: 335544320,
  kernelSha256: "b".repeat(64),
  initrdSha256: "c".repeat(64),
  memoryMiB: 512,
  cpus: 2,
  network: "user"
}

const facts: WarmFacts = {
  cold: false,
  restorable: true,
  firstStart: true,
  diskPristine: true,
  imageDigest: shape.imageDigest,
  mounts: 0,
  namedNetworks: 0,
  brokers: 0
}

describe("warm-start templates", () => {
  it("key a template by everything its saved guest depends on, and nothing else", () => {
    const key = templateKey(shape)
    assert.match(key, /^[0-9a-f]{24}$/)
    assert.strictEqual(templateKey({ ...shape }), key)
    const variants: ReadonlyArray<Partial<TemplateShape>> = [
      { backend: "firecracker" },
      { imageDigest: `sha256:${"d".repeat(64)}` },
      { diskBytes: 1 },
      { kernelSha256: "e".repeat(64) },
      { initrdSha256: "f".repeat(64) },
      { memoryMiB: 1024 },
      { cpus: 1 },
      { network: "isolated" },
      { disks: 1 },
      { disks: 2 },
      { nets: 1 },
      { nets: 2 },
      { disks: 1, nets: 1 },
      { model: true },
      { brokers: 1 },
      { model: true, brokers: 2 },
      // QEMU's boot profile and emulated CPU: a guest booted with other options is another template.
      { variant: "fast:-cpu qemu64,+arat" },
      { variant: "compat:qemu64" }
    ]
    const keys = variants.map((v) => templateKey({ ...shape, ...v }))
    assert.strictEqual(new Set([key, ...keys]).size, variants.length + 1)
    // A shape without disks keeps the key it had before templates held stand-ins for them.
    assert.strictEqual(key, "122cc7951a9e0e872b6c3f25")
  })

  it("let only a first start on the image's untouched disk, with at most 16 disks attached, be warm", () => {
    assert.isUndefined(warmRefusal(facts))
    assert.isUndefined(warmRefusal({ ...facts, mounts: 16 }), "volumes and disks take a template's stand-ins")
    assert.isUndefined(warmRefusal({ ...facts, namedNetworks: 8 }), "so do NICs on named networks")
    assert.isUndefined(warmRefusal({ ...facts, brokers: 8 }), "and broker channels")
    const refusals: ReadonlyArray<[Partial<WarmFacts>, string]> = [
      [{ cold: true }, "--cold"],
      [{ restorable: false }, "cannot restore"],
      [{ firstStart: false }, "not the first start"],
      [{ diskPristine: false }, "disk changed"],
      [{ imageDigest: undefined }, "no digest"],
      [{ mounts: 17 }, "more than 16 disks or volumes"],
      [{ namedNetworks: 9 }, "more than 8 named networks"],
      [{ brokers: 9 }, "more than 8 credential broker endpoints"]
    ]
    for (const [change, words] of refusals) {
      const reason = warmRefusal({ ...facts, ...change })
      assert.isString(reason, JSON.stringify(change))
      assert.include(reason, words)
    }
    // --cold wins over every other reason.
    assert.strictEqual(warmRefusal({ ...facts, cold: true, mounts: 2, firstStart: false }), "--cold")
  })
})

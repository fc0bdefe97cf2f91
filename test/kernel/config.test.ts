import { assert, describe, it } from "@effect/vitest"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { hzBesideKernel, hzFromConfig } from "../../src/layers/kernel/internal/config.ts"

describe("the kernel's CONFIG_HZ", () => {
  it("is read from a build configuration", () => {
    assert.strictEqual(hzFromConfig("# CONFIG_HZ_100 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"), 250)
    assert.strictEqual(hzFromConfig("CONFIG_HZ=1000"), 1000)
    assert.isUndefined(hzFromConfig("CONFIG_HZ_250=y\n"))
    assert.isUndefined(hzFromConfig("CONFIG_HZ=0\n"))
    assert.isUndefined(hzFromConfig("CONFIG_HZ=abc\n"))
  })

  it("is found beside the kernel file as a package lays them out, else unknown", () => {
    const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-hz-"))
    try {
      const kernel = NodePath.join(dir, "vmlinuz-6.1.0-test")
      NodeFs.writeFileSync(kernel, "")
      assert.isUndefined(hzBesideKernel(kernel, "6.1.0-test"))
      NodeFs.writeFileSync(NodePath.join(dir, "config-6.1.0-test"), "CONFIG_HZ=250\n")
      assert.strictEqual(hzBesideKernel(kernel, "6.1.0-test"), 250)
      assert.isUndefined(hzBesideKernel(kernel, "6.1.0-other"))
    } finally {
      NodeFs.rmSync(dir, { recursive: true, force: true })
    }
  })
})

import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { lookupCredential, normalizeAuthKey } from "../../src/layers/registry/Credentials.ts"
import { choosePlatform, parseChallenge } from "../../src/layers/registry/Http.ts"
import { findTool, ToolMissing, toolPackages } from "../../src/layers/rootfs/Tools.ts"

const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-creds-"))
const file = (name: string, content: unknown) => {
  const path = NodePath.join(dir, name)
  NodeFs.writeFileSync(path, JSON.stringify(content))
  return path
}
const b64 = (s: string) => Buffer.from(s).toString("base64")

describe("registry credentials", () => {
  it("normalizes auth keys the way Docker and Podman write them", () => {
    assert.strictEqual(normalizeAuthKey("https://index.docker.io/v1/"), "docker.io")
    assert.strictEqual(normalizeAuthKey("registry-1.docker.io"), "docker.io")
    assert.strictEqual(normalizeAuthKey("http://127.0.0.1:5000"), "127.0.0.1:5000")
    assert.strictEqual(normalizeAuthKey("ghcr.io/org"), "ghcr.io")
  })

  it.effect("reads $REGISTRY_AUTH_FILE before the Home's and Docker's files", () =>
    Effect.gen(function*() {
      const authFile = file("auth.json", { auths: { "ghcr.io": { auth: b64("first:one") } } })
      const homeAuth = file("home.json", { auths: { "ghcr.io": { auth: b64("second:two") } } })
      const docker = file("docker.json", {
        auths: { "https://index.docker.io/v1/": { auth: b64("hub:pw:with:colons") } }
      })
      const sources = { authFile, homeAuthFile: homeAuth, dockerConfig: docker }
      assert.strictEqual((yield* lookupCredential("ghcr.io", sources))?.username, "first")
      const hub = yield* lookupCredential("docker.io", sources)
      assert.strictEqual(hub?.password, "pw:with:colons")
      assert.isUndefined(yield* lookupCredential("quay.io", sources))
    }))

  it.effect("runs docker-credential helpers as processes", () =>
    Effect.gen(function*() {
      const bin = NodePath.join(dir, "bin")
      NodeFs.mkdirSync(bin, { recursive: true })
      const helper = NodePath.join(bin, "docker-credential-fake")
      NodeFs.writeFileSync(
        helper,
        `#!/bin/sh\nread server\nif [ "$1" = get ] && [ "$server" = "registry.example.com" ]; then\n  echo '{"ServerURL":"registry.example.com","Username":"helped","Secret":"from-helper"}'\nelse\n  echo "credentials not found in native keychain"; exit 1\nfi\n`,
        { mode: 0o755 }
      )
      const docker = file("helpers.json", {
        credHelpers: { "registry.example.com": "fake" },
        credsStore: "fake"
      })
      const path = process.env.PATH
      process.env.PATH = `${bin}:${path}`
      const found = yield* lookupCredential("registry.example.com", { dockerConfig: docker }).pipe(
        Effect.ensuring(Effect.sync(() => (process.env.PATH = path)))
      )
      assert.deepStrictEqual(found, {
        username: "helped",
        password: "from-helper",
        source: "docker-credential-fake"
      })
      process.env.PATH = `${bin}:${path}`
      const none = yield* lookupCredential("other.example.com", { dockerConfig: docker }).pipe(
        Effect.ensuring(Effect.sync(() => (process.env.PATH = path)))
      )
      assert.isUndefined(none)
      const missing = yield* lookupCredential("x.example.com", {
        dockerConfig: file("missing-helper.json", { credsStore: "absent-helper" })
      }).pipe(Effect.flip)
      assert.include(missing.message, "docker-credential-absent-helper")
    }))

  it("parses authentication challenges", () => {
    const bearer = parseChallenge(
      'Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull"'
    )
    assert.strictEqual(bearer?.scheme, "bearer")
    assert.strictEqual(bearer?.params.realm, "https://auth.example.com/token")
    assert.strictEqual(bearer?.params.scope, "repository:a/b:pull")
    assert.strictEqual(parseChallenge('Basic realm="x"')?.scheme, "basic")
  })

  it("chooses the manifest for a platform from an index", () => {
    const m = (architecture: string, variant?: string) => ({
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      digest: `sha256:${architecture}${variant ?? ""}`,
      size: 1,
      platform: { os: "linux", architecture, ...(variant ? { variant } : {}) }
    })
    const index = [m("arm", "v7"), m("arm64", "v8"), m("amd64"), m("unknown")]
    assert.strictEqual(choosePlatform(index, { os: "linux", architecture: "amd64" })?.digest, "sha256:amd64")
    assert.strictEqual(
      choosePlatform(index, { os: "linux", architecture: "arm64" })?.digest,
      "sha256:arm64v8"
    )
    assert.strictEqual(
      choosePlatform(index, { os: "linux", architecture: "arm64", variant: "v8" })?.digest,
      "sha256:arm64v8"
    )
    assert.strictEqual(
      choosePlatform([m("arm64")], { os: "linux", architecture: "arm64", variant: "v8" })?.digest,
      "sha256:arm64"
    )
    assert.isUndefined(choosePlatform(index, { os: "linux", architecture: "arm", variant: "v6" }))
    assert.isUndefined(choosePlatform(index, { os: "linux", architecture: "s390x" }))
  })
})

describe("host tools", () => {
  it.effect("a missing tool fails with the Debian package to install", () =>
    Effect.gen(function*() {
      const error = yield* findTool("mke2fs-that-does-not-exist").pipe(Effect.flip)
      assert.include(error.message, "not installed")
      assert.strictEqual(toolPackages.zstd, "zstd")
      assert.strictEqual(toolPackages.debugfs, "e2fsprogs")
      const zstd = new ToolMissing({ tool: "zstd", pkg: toolPackages.zstd! })
      assert.strictEqual(zstd.message, "zstd is not installed (Debian package: zstd)")
      assert.strictEqual(zstd.remediation, "install it: apt-get install zstd")
    }))
})

import { assert, describe, it } from "@effect/vitest"
import { Either } from "effect"
import { isLoopbackRegistry, normalizeImageRef, parseImageRef } from "../../src/domain/ImageRef.ts"

const normalized = (input: string) => Either.getOrThrow(normalizeImageRef(input))
const problem = (input: string) =>
  Either.match(parseImageRef(input), { onLeft: (e) => e.message, onRight: () => "" })

describe("image references", () => {
  it("normalizes Docker Hub names as docker does", () => {
    assert.strictEqual(normalized("ubuntu"), "docker.io/library/ubuntu:latest")
    assert.strictEqual(normalized("ubuntu:24.04"), "docker.io/library/ubuntu:24.04")
    assert.strictEqual(normalized("docker.io/ubuntu"), "docker.io/library/ubuntu:latest")
    assert.strictEqual(normalized("index.docker.io/library/ubuntu"), "docker.io/library/ubuntu:latest")
    assert.strictEqual(normalized("someone/tool:v1"), "docker.io/someone/tool:v1")
  })

  it("recognizes registries by a dot, a port or localhost", () => {
    assert.strictEqual(normalized("ghcr.io/org/app:1.2"), "ghcr.io/org/app:1.2")
    assert.strictEqual(normalized("127.0.0.1:5000/busybox"), "127.0.0.1:5000/busybox:latest")
    assert.strictEqual(normalized("localhost/app"), "localhost/app:latest")
    assert.strictEqual(normalized("localhost:5000/a/b/c:tag"), "localhost:5000/a/b/c:tag")
    assert.strictEqual(normalized("registry:5000/app"), "registry:5000/app:latest")
    assert.strictEqual(normalized("[::1]:5000/app"), "[::1]:5000/app:latest")
  })

  it("keeps digests, with or without a tag", () => {
    const digest = `sha256:${"a".repeat(64)}`
    assert.strictEqual(normalized(`alpine@${digest}`), `docker.io/library/alpine@${digest}`)
    assert.strictEqual(normalized(`alpine:3.20@${digest}`), `docker.io/library/alpine:3.20@${digest}`)
    const ref = Either.getOrThrow(parseImageRef(`alpine:3.20@${digest}`))
    assert.strictEqual(ref.reference, digest)
    assert.strictEqual(ref.apiHost, "registry-1.docker.io")
  })

  it("explains malformed references", () => {
    assert.include(problem(""), "empty")
    assert.include(problem("Ubuntu"), "lowercase")
    assert.include(problem("ubuntu:"), "not a valid tag")
    assert.include(problem("ubuntu:-bad"), "not a valid tag")
    assert.include(problem("ubuntu@sha256:abc"), "not a digest")
    assert.include(problem("https://ghcr.io/x"), "scheme")
    assert.include(problem("a//b"), "empty component")
    assert.include(problem("a b"), "whitespace")
    assert.include(problem("ex_.com/app"), "not a valid registry host")
    assert.include(problem("org/app_"), "not a valid repository component")
  })

  it("allows plain http only for loopback hosts", () => {
    assert.isTrue(isLoopbackRegistry("127.0.0.1:5000"))
    assert.isTrue(isLoopbackRegistry("localhost"))
    assert.isTrue(isLoopbackRegistry("[::1]:5000"))
    assert.isFalse(isLoopbackRegistry("registry.local:5000"))
    assert.isFalse(isLoopbackRegistry("docker.io"))
  })
})

/**
 * `image push` and `registry login|logout|list` end to end, through the CLI bundle, against Debian's
 * docker-registry on loopback (one open, one behind htpasswd, one behind bearer tokens), cross-checked
 * with skopeo, and a push killed half way. No VM boots.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { Host } from "../../src/promise/index.ts"
import { cliAsync, type CliResult, errorOf } from "../support/cli.ts"
import { inspectImage, requireTool, skopeo, startRegistry, type TestRegistry } from "../support/registry.ts"

const builtin = "microagent.local/busybox:latest"
const password = "pa55-w0rd-not-in-output"

let open: TestRegistry
let secured: TestRegistry
let scratch: string
let home: string
let localDigest: string

const json = <A>(result: CliResult): A => {
  assert.strictEqual(result.code, 0, `${result.stdout}\n${result.stderr}`)
  return JSON.parse(result.stdout) as A
}

interface Pushed {
  readonly ref: string
  readonly digest: string
  readonly pushed: ReadonlyArray<string>
  readonly skipped: ReadonlyArray<string>
  readonly mounted: ReadonlyArray<string>
  readonly bytes: number
}

const ma = (
  args: ReadonlyArray<string>,
  stateDir: string,
  extra: { env?: Record<string, string>; input?: string } = {}
) =>
  cliAsync([...args], {
    stateDir,
    env: { MICROAGENT_OUTPUT: "json", ...extra.env },
    ...(extra.input !== undefined ? { input: extra.input } : {})
  })

beforeAll(async () => {
  requireTool("skopeo", "skopeo")
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-push-e2e-"))
  home = NodePath.join(scratch, "home")
  open = await startRegistry()
  secured = await startRegistry({ auth: { username: "ci", password } })
  localDigest = json<{ digest: string }>(await ma(["image", "pull", builtin], home)).digest
}, 180_000)

afterAll(async () => {
  await open?.stop()
  await secured?.stop()
  if (scratch !== undefined) NodeFs.rmSync(scratch, { recursive: true, force: true })
})

describe("image push", () => {
  it(
    "pushes the built-in image with its own digest, sends nothing twice, and pulls back the same",
    async () => {
      const target = `${open.host}/tools/busybox:1`
      const first = json<Pushed>(await ma(["image", "push", builtin, "--to", target], home))
      assert.strictEqual(first.ref, target)
      assert.strictEqual(first.digest, localDigest)
      assert.strictEqual(first.pushed.length, 3, "config and two layers")
      assert.deepStrictEqual([first.skipped, first.mounted], [[], []])
      assert.isAbove(first.bytes, 0)
      const inspected = inspectImage(open, "tools/busybox:1") as { Digest: string }
      assert.strictEqual(inspected.Digest, localDigest)

      const again = json<Pushed>(await ma(["image", "push", builtin, "--to", target], home))
      assert.deepStrictEqual(again.pushed, [])
      assert.deepStrictEqual([...again.skipped].sort(), [...first.pushed].sort())
      assert.strictEqual(again.bytes, 0)
      assert.strictEqual(again.digest, localDigest)

      const fresh = NodePath.join(scratch, "fresh")
      const pulled = json<{ digest: string; source: string }>(await ma(["image", "pull", target], fresh))
      assert.strictEqual(pulled.digest, localDigest)
      assert.strictEqual(pulled.source, "registry")

      // From the pulled copy, to another repository of the same registry: every blob is mounted.
      const mounted = json<Pushed>(
        await ma(["image", "push", target, "--to", `${open.host}/mirror/busybox:2`], fresh)
      )
      assert.deepStrictEqual([...mounted.mounted].sort(), [...first.pushed].sort())
      assert.deepStrictEqual([mounted.pushed, mounted.skipped], [[], []])
      assert.strictEqual((inspectImage(open, "mirror/busybox:2") as { Digest: string }).Digest, localDigest)
    },
    240_000
  )

  it("refuses an image the store does not hold, and a bad target, without a registry call", async () => {
    const missing = await ma(["image", "push", "nothing/here:1", "--to", `${open.host}/x/y:1`], home)
    assert.strictEqual(missing.code, 1)
    assert.strictEqual(errorOf(missing).error.kind, "not_found")
    const bad = await ma(["image", "push", builtin, "--to", "UPPER/Case:1"], home)
    assert.strictEqual(bad.code, 2)
  }, 60_000)
})

describe("image save", () => {
  it("writes an OCI archive that skopeo and image import read back with the same digest", async () => {
    const archive = NodePath.join(scratch, "busybox.tar")
    const saved = json<{ digest: string; file: string }>(
      await ma(["image", "save", builtin, "-o", archive], home)
    )
    assert.deepStrictEqual([saved.digest, saved.file], [localDigest, archive])
    const inspected = JSON.parse(skopeo(["inspect", `oci-archive:${archive}`])) as { Digest: string }
    assert.strictEqual(inspected.Digest, localDigest)
    const imported = json<{ ref: string; digest: string }>(
      await ma(["image", "import", archive], NodePath.join(scratch, "imported"))
    )
    assert.deepStrictEqual([imported.ref, imported.digest], [builtin, localDigest])
    const again = await ma(["image", "save", builtin, "-o", archive], home)
    assert.strictEqual(again.code, 1)
    assert.strictEqual(errorOf(again).error.kind, "conflict")
  }, 180_000)
})

describe("the Promise facade", () => {
  it(
    "host.pushImage pushes (and skips what the registry has); host.registryLogins lists without secrets",
    async () => {
      await using host = Host.open({ home })
      const target = `${open.host}/promise/busybox:1`
      const first = await host.pushImage(builtin, { to: target })
      assert.strictEqual(first.digest, localDigest)
      assert.strictEqual(first.pushed.length, 3)
      const second = await host.pushImage(builtin, { to: target })
      assert.deepStrictEqual(second.pushed, [])
      assert.strictEqual(second.skipped.length, 3)
      const missing = await host.pushImage("nothing/here:1", { to: target }).then(() => undefined, (e) => e)
      assert.strictEqual(missing?.kind, "not_found")
      assert.isArray(await host.registryLogins())
    },
    180_000
  )
})

describe("registry login, logout, list, and pushes with the saved login", () => {
  it(
    "a wrong password is policy_denied and saves nothing; a right one is saved 0600 and used by push",
    async () => {
      const target = `${secured.host}/team/busybox:1`
      const auth = NodePath.join(home, "auth.json")
      const anonymous = await ma(["image", "push", builtin, "--to", target], home)
      assert.strictEqual(anonymous.code, 1)
      assert.strictEqual(errorOf(anonymous).error.kind, "policy_denied")

      const wrong = await ma(["registry", "login", secured.host, "-u", "ci", "--password-stdin"], home, {
        input: "not-the-password\n"
      })
      assert.strictEqual(wrong.code, 1)
      assert.strictEqual(errorOf(wrong).error.kind, "policy_denied")
      assert.notInclude(wrong.stderr, "not-the-password")
      assert.isFalse(NodeFs.existsSync(auth), "a rejected login writes no auth file")

      const right = json<{ registry: string; file: string }>(
        await ma(["registry", "login", secured.host, "-u", "ci", "--password-stdin"], home, {
          input: `${password}\n`
        })
      )
      assert.deepStrictEqual([right.registry, right.file], [secured.host, auth])
      assert.strictEqual(NodeFs.statSync(auth).mode & 0o777, 0o600)

      const listed = await ma(["registry", "list"], home)
      assert.notInclude(listed.stdout + listed.stderr, password)
      assert.deepStrictEqual(json<{ logins: unknown }>(listed).logins, [
        { registry: secured.host, username: "ci", source: auth }
      ])
      const text = await ma(["registry", "list"], home, { env: { MICROAGENT_OUTPUT: "text" } })
      assert.include(text.stdout, secured.host)
      assert.notInclude(text.stdout, password)

      const pushed = json<Pushed>(await ma(["image", "push", builtin, "--to", target], home))
      assert.strictEqual(pushed.digest, localDigest)
      assert.strictEqual(pushed.pushed.length, 3)
      assert.strictEqual((inspectImage(secured, "team/busybox:1") as { Digest: string }).Digest, localDigest)

      // Another login keeps this one; logout removes only its own entry, then there is nothing to remove.
      json(await ma(["registry", "login", open.host, "-u", "anyone", "-p", "x"], home))
      json(await ma(["registry", "logout", open.host], home))
      assert.deepStrictEqual(
        Object.keys((JSON.parse(NodeFs.readFileSync(auth, "utf8")) as { auths: object }).auths),
        [secured.host]
      )
      const again = await ma(["registry", "logout", open.host], home)
      assert.strictEqual(again.code, 1)
      assert.strictEqual(errorOf(again).error.kind, "not_found")
    },
    240_000
  )

  it("REGISTRY_AUTH_FILE is the file written, keeping what else it holds", async () => {
    const file = NodePath.join(scratch, "containers-auth.json")
    NodeFs.writeFileSync(
      file,
      JSON.stringify({ auths: { "ghcr.io": { auth: "b3RoZXI6dG9rZW4=" } }, extra: 1 })
    )
    const env = { REGISTRY_AUTH_FILE: file }
    json(await ma(["registry", "login", secured.host, "-u", "ci", "-p", password], home, { env }))
    const saved = JSON.parse(NodeFs.readFileSync(file, "utf8")) as {
      auths: Record<string, unknown>
      extra: number
    }
    assert.deepStrictEqual(Object.keys(saved.auths).sort(), ["ghcr.io", secured.host].sort())
    assert.strictEqual(saved.extra, 1)
    assert.strictEqual(NodeFs.statSync(file).mode & 0o777, 0o600)
    const listed = json<{ logins: ReadonlyArray<{ registry: string; source: string }> }>(
      await ma(["registry", "list"], home, { env })
    )
    assert.includeDeepMembers(listed.logins.map((l) => [l.registry, l.source]), [
      ["ghcr.io", file],
      [secured.host, file]
    ])
  }, 120_000)
})

describe("a registry behind bearer tokens (distribution's token auth, Docker Hub's scheme)", () => {
  it(
    "anonymous and wrong logins are policy_denied; a saved login gets a push-scoped token and pushes",
    async () => {
      const tokened = await startRegistry({ token: { username: "robot", password } })
      try {
        const own = NodePath.join(scratch, "token-home")
        json(await ma(["image", "pull", builtin], own))
        const target = `${tokened.host}/team/busybox:1`
        const anonymous = await ma(["image", "push", builtin, "--to", target], own)
        assert.strictEqual(errorOf(anonymous).error.kind, "policy_denied")

        const wrong = await ma(["registry", "login", tokened.host, "-u", "robot", "--password-stdin"], own, {
          input: "not-the-password\n"
        })
        assert.strictEqual(errorOf(wrong).error.kind, "policy_denied")
        json(
          await ma(["registry", "login", tokened.host, "-u", "robot", "--password-stdin"], own, {
            input: `${password}\n`
          })
        )

        const pushed = json<Pushed>(await ma(["image", "push", builtin, "--to", target], own))
        assert.strictEqual(pushed.digest, localDigest)
        assert.strictEqual(pushed.pushed.length, 3)
        const granted = tokened.tokens!.requests.filter((r) => r.user === "robot")
        assert.isTrue(
          granted.some((r) => r.scopes.some((scope) => /^repository:team\/busybox:.*push/.test(scope))),
          JSON.stringify(tokened.tokens!.requests)
        )
        // Pulled back into a fresh state directory with the saved login. Not with skopeo: its synchronous
        // run would block this process, which serves the tokens.
        const pulled = json<{ digest: string; source: string }>(
          await ma(["image", "pull", target], NodePath.join(scratch, "token-fresh"), {
            env: { REGISTRY_AUTH_FILE: NodePath.join(own, "auth.json") }
          })
        )
        assert.deepStrictEqual([pulled.digest, pulled.source], [localDigest, "registry"])
      } finally {
        await tokened.stop()
      }
    },
    240_000
  )
})

/**
 * A TCP relay that passes what the client sends at most `bytesPerSecond` and counts it: a push through it
 * is slow enough to be killed half way through a blob.
 */
const startThrottle = async (upstreamPort: number, bytesPerSecond: number) => {
  const NodeNet = await import("node:net")
  const state = { forwarded: 0 }
  const sockets = new Set<import("node:net").Socket>()
  const server = NodeNet.createServer((client) => {
    const upstream = NodeNet.connect(upstreamPort, "127.0.0.1")
    for (const socket of [client, upstream]) {
      sockets.add(socket)
      socket.on("error", () => {
        client.destroy()
        upstream.destroy()
      })
      socket.on("close", () => sockets.delete(socket))
    }
    upstream.pipe(client)
    client.on("data", (chunk: Buffer) => {
      state.forwarded += chunk.length
      upstream.write(chunk)
      client.pause()
      setTimeout(() => client.resume(), (chunk.length / bytesPerSecond) * 1000)
    })
    client.on("end", () => upstream.end())
  })
  const port = await new Promise<number>((resolve) =>
    server.listen(0, "127.0.0.1", () => resolve((server.address() as import("node:net").AddressInfo).port))
  )
  return {
    host: `127.0.0.1:${port}`,
    state,
    stop: () => {
      for (const socket of sockets) socket.destroy()
      return new Promise((resolve) => server.close(resolve))
    }
  }
}

describe("a push killed half way", () => {
  it("leaves no image behind, and the next push sends it whole", async () => {
    const { hostArchitecture, busyboxConfig, busyboxLayers, writeOciLayout } = await import(
      "../support/images.ts"
    )
    const NodeChild = await import("node:child_process")
    const NodeCrypto = await import("node:crypto")
    const { binPath } = await import("../support/cli.ts")
    const layout = NodePath.join(scratch, "big-layout")
    // 16 MiB that no compression shrinks: the push spends seconds on this blob behind the relay.
    const big = NodeCrypto.randomBytes(16 * 1024 * 1024)
    writeOciLayout(layout, [{
      layers: [...busyboxLayers(), [{ path: "data/big.bin", content: big }]],
      architecture: hostArchitecture,
      config: busyboxConfig
    }], "latest")
    const own = NodePath.join(scratch, "interrupted-home")
    const imported = json<{ ref: string; digest: string }>(
      await ma(["image", "import", layout, "--tag", "localhost/big/data:1"], own)
    )
    const relay = await startThrottle(open.port, 2 * 1024 * 1024)
    try {
      const child = NodeChild.spawn(process.execPath, [
        binPath,
        "image",
        "push",
        imported.ref,
        "--to",
        `${relay.host}/big/data:1`
      ], {
        env: { ...process.env, MICROAGENT_HOME: own, MICROAGENT_OUTPUT: "json", NO_COLOR: "1" },
        stdio: "ignore"
      })
      const exited = new Promise<NodeJS.Signals | null>((resolve) =>
        child.once("exit", (_, signal) => resolve(signal))
      )
      // Killed once a few MiB of the big layer are through, long before its 16 MiB are.
      const deadline = Date.now() + 120_000
      while (relay.state.forwarded < 4 * 1024 * 1024 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      assert.isAtLeast(relay.state.forwarded, 4 * 1024 * 1024, "the push got under way")
      child.kill("SIGKILL")
      assert.strictEqual(await exited, "SIGKILL")
    } finally {
      await relay.stop()
    }
    // No manifest was written: the tag does not exist.
    const absent = await ma(["image", "pull", `${open.host}/big/data:1`], NodePath.join(scratch, "absent"))
    assert.strictEqual(errorOf(absent).error.kind, "not_found")

    const pushed = json<Pushed>(
      await ma(["image", "push", imported.ref, "--to", `${open.host}/big/data:1`], own)
    )
    assert.strictEqual(pushed.digest, imported.digest)
    assert.isAbove(pushed.bytes, big.length, "the big layer was sent whole")
    assert.strictEqual((inspectImage(open, "big/data:1") as { Digest: string }).Digest, imported.digest)
    // Every blob reads back whole: skopeo verifies each digest as it copies.
    skopeo([
      "copy",
      "--quiet",
      "--src-tls-verify=false",
      `docker://${open.host}/big/data:1`,
      `oci:${NodePath.join(scratch, "big-copy")}:latest`
    ])
  }, 240_000)
})

import { assert, describe, it } from "@effect/vitest"
import { Effect, Either, Exit } from "effect"
import * as Net from "node:net"
import { parsePublish, parsePublishes, probePorts } from "../../src/domain/Publish.ts"
import { PublishedPort } from "../../src/domain/Workspace.ts"

const ok = (text: string) => Either.getOrThrow(parsePublish(text))
const problem = (text: string) => {
  const result = parsePublish(text)
  assert.isTrue(Either.isLeft(result), `${text} should be refused`)
  const error = Either.getOrThrow(Either.flip(result))
  assert.strictEqual(error._tag, "InvalidInput")
  return error.message
}

describe("-p/--publish parser", () => {
  it("reads HOSTPORT:GUESTPORT on loopback, an explicit IPv4 address, and /tcp", () => {
    assert.deepStrictEqual(
      ok("8080:80"),
      new PublishedPort({ hostIp: "127.0.0.1", hostPort: 8080, guestPort: 80, protocol: "tcp" })
    )
    assert.deepStrictEqual(
      ok("0.0.0.0:443:8443/tcp"),
      new PublishedPort({ hostIp: "0.0.0.0", hostPort: 443, guestPort: 8443, protocol: "tcp" })
    )
    assert.deepStrictEqual(ok("1:65535/TCP").hostPort, 1)
  })

  it("says what is wrong with each bad value", () => {
    assert.include(problem("80"), "two or three")
    assert.include(problem("1:2:3:4"), "two or three")
    assert.include(problem("0:80"), "host port 0 is outside 1-65535")
    assert.include(problem("8080:65536"), "guest port 65536 is outside 1-65535")
    assert.include(problem("8080:80/udp"), "only TCP")
    assert.include(problem("8080:80/sctp"), `unknown protocol "sctp"`)
    assert.include(problem("localhost:8080:80"), "not an IPv4 address")
    assert.include(problem("256.0.0.1:8080:80"), "not an IPv4 address")
    assert.include(problem("[::1]:8080:80"), "two or three")
    assert.include(problem("http:80"), `"http" is not a number`)
    assert.include(problem("8080:"), `"" is not a number`)
  })

  it.effect("refuses the same host port twice", () =>
    Effect.gen(function*() {
      const twice = yield* Effect.exit(parsePublishes(["8080:80", "127.0.0.1:8080:81"]))
      assert.isTrue(Exit.isFailure(twice))
      const wildcard = yield* Effect.exit(parsePublishes(["0.0.0.0:8080:80", "8080:81"]))
      assert.isTrue(Exit.isFailure(wildcard))
      assert.strictEqual((yield* parsePublishes(["8080:80", "8081:80"])).length, 2)
    }))
})

describe("host port probe", () => {
  it.live("passes a free port and refuses one in use with a Conflict naming it", () =>
    Effect.gen(function*() {
      const server = Net.createServer()
      yield* Effect.async<void>((resume) => {
        server.listen(0, "127.0.0.1", () => resume(Effect.void))
      })
      const port = (server.address() as Net.AddressInfo).port
      const busy = yield* Effect.flip(probePorts([ok(`${port}:80`)]))
      assert.strictEqual(busy._tag, "Conflict")
      assert.include(busy.message, `127.0.0.1:${port}`)
      yield* Effect.async<void>((resume) => {
        server.close(() => resume(Effect.void))
      })
      yield* probePorts([ok(`${port}:80`)])
      const foreign = yield* Effect.flip(probePorts([ok("192.0.2.1:8080:80")]))
      assert.strictEqual(foreign._tag, "InvalidInput")
    }))
})

/**
 * A guest's own addressing: the spec's network.ip, .subnet, .gateway, .dns and .routes, checked
 * together against the network and egress modes.
 */
import { Either } from "effect"
import { assert, describe, it } from "vitest"
import {
  addressingOf,
  type AddressingRequest,
  copyAddressing,
  mediatedResolver,
  slirpNetwork,
  userNicMac
} from "../../src/domain/Addressing.ts"

type Context = Parameters<typeof addressingOf>[1]
const broker: Context = { network: "user", egress: "broker" }
const off: Context = { network: "user", egress: "off" }

const ok = (request: AddressingRequest, context: Context = broker) => {
  const result = addressingOf(request, context)
  if (Either.isLeft(result)) assert.fail(result.left.message)
  return result.right
}
const error = (request: AddressingRequest, context: Context = broker) => {
  const result = addressingOf(request, context)
  if (Either.isRight(result)) assert.fail(`accepted: ${JSON.stringify(result.right)}`)
  return result.left.message
}

describe("a guest's own addressing", () => {
  it("is absent when nothing is asked", () => {
    assert.isUndefined(ok({}))
    assert.isUndefined(ok({ dns: [], routes: [] }))
  })

  it("takes the ip's prefix from the subnet, and the gateway as the network's first address by default", () => {
    assert.deepStrictEqual(ok({ ip: "10.77.0.20", subnet: "10.77.0.0/24" }), {
      ip: "10.77.0.20/24",
      gateway: "10.77.0.1",
      dns: [],
      routes: []
    })
    assert.deepStrictEqual(
      ok({ ip: "192.168.50.9/28", gateway: "192.168.50.14", routes: ["203.0.113.7/24 via 192.168.50.1"] }),
      {
        ip: "192.168.50.9/28",
        gateway: "192.168.50.14",
        dns: [],
        routes: [{ destination: "203.0.113.0/24", via: "192.168.50.1" }]
      }
    )
    // Routes and resolvers alone keep QEMU's addressing.
    assert.deepStrictEqual(ok({ dns: ["1.1.1.1"], routes: ["198.51.100.0/24 via 10.0.2.2"] }, off), {
      ip: "10.0.2.15/24",
      gateway: "10.0.2.2",
      dns: ["1.1.1.1"],
      routes: [{ destination: "198.51.100.0/24", via: "10.0.2.2" }]
    })
  })

  it("refuses what cannot work, saying which field", () => {
    assert.include(error({ ip: "10.77.0.300/24" }), 'ip "10.77.0.300/24" is not A.B.C.D/N')
    assert.include(error({ ip: "10.77.0.20/24", subnet: "10.78.0.0/24" }), "not in subnet")
    assert.include(error({ ip: "10.77.0.0/24" }), "network's own or broadcast")
    assert.include(error({ ip: "127.0.0.5/8" }), "cannot use")
    assert.include(error({ ip: "10.77.0.20/31" }), "/8 to /30")
    assert.include(
      error({ ip: "10.77.0.20/24", gateway: "10.99.0.1" }),
      "gateway 10.99.0.1 is not another address"
    )
    assert.include(error({ ip: "10.77.0.20/24", gateway: "10.77.0.20" }), "is not another address")
    assert.include(error({ gateway: "10.0.2.2" }), "needs the guest's ip")
    assert.include(error({ routes: ["default"] }), 'route "default" is not')
    assert.include(
      error({ ip: "10.77.0.20/24", routes: ["0.0.0.0/0 via 10.1.0.1"] }),
      "is not on 10.77.0.0/24"
    )
    assert.include(error({ dns: ["8.8.8.8"] }), "the mediator is the guest's one resolver")
    assert.include(
      error({ ip: "10.77.0.20/24" }, { network: "isolated", egress: "broker" }),
      'not "isolated"'
    )
  })

  it("puts QEMU's resolver at the network's third address, unless the guest or gateway has it", () => {
    assert.deepStrictEqual(slirpNetwork(ok({ ip: "10.77.0.20/24" })!), {
      net: "10.77.0.0/24",
      host: "10.77.0.1",
      resolver: "10.77.0.3"
    })
    assert.strictEqual(slirpNetwork(ok({ ip: "10.77.0.3/24" })!).resolver, "10.77.0.4")
  })
})

describe("the identity of a copy resumed from another workspace's memory", () => {
  it("gives each workspace a MAC of its own under QEMU's prefix, unicast and stable", () => {
    const macs = ["w", "w-fork-1", "w-fork-2", "kid-1", "kid-2"].map(userNicMac)
    for (const mac of macs) assert.match(mac, /^52:54:00(:[0-9a-f]{2}){3}$/)
    assert.strictEqual(new Set(macs).size, macs.length)
    assert.strictEqual(userNicMac("w"), userNicMac("w"))
  })

  it("numbers a fork's children from 10.0.2.16, never on the source's address", () => {
    const ips = Array.from({ length: 16 }, (_, i) => copyAddressing(undefined, i)!.ip)
    assert.deepStrictEqual(ips.slice(0, 3), ["10.0.2.16/24", "10.0.2.17/24", "10.0.2.18/24"])
    assert.strictEqual(new Set(ips).size, 16)
    assert.notInclude(ips, "10.0.2.15/24")
    // A child of a child: its own children skip its address, and still differ from each other.
    const parent = copyAddressing(undefined, 0)!
    const grandchildren = Array.from({ length: 4 }, (_, i) => copyAddressing(parent, i)!.ip)
    assert.notInclude(grandchildren, parent.ip)
    assert.strictEqual(new Set(grandchildren).size, 4)
    for (const a of [parent, copyAddressing(parent, 3)!]) {
      assert.deepStrictEqual([a.gateway, a.dns, a.routes], ["10.0.2.2", [], []])
      assert.strictEqual(mediatedResolver(a), "10.0.2.3")
    }
  })

  it("keeps an addressing the user chose on a network of their own", () => {
    const own = { ip: "10.77.0.20/24", gateway: "10.77.0.1", dns: [], routes: [] }
    assert.strictEqual(copyAddressing(own, 2), own)
    assert.strictEqual(mediatedResolver(own), "10.77.0.1")
    assert.strictEqual(mediatedResolver(undefined), "10.0.2.3")
  })
})

import { assert, describe, it } from "@effect/vitest"
import {
  autoSubnet,
  bridgeName,
  formatSubnet,
  lowestFree,
  macAddress,
  namespaceName,
  parseIp,
  parseSubnet,
  slirpSubnet,
  type Subnet,
  tapName
} from "../../src/layers/network/Addressing.ts"

const subnet = (text: string) => parseSubnet(text) as Subnet

describe("subnets", () => {
  it("parses IPv4 CIDRs and explains the ones it refuses", () => {
    assert.deepStrictEqual(parseSubnet("10.89.3.0/24"), { base: parseIp("10.89.3.0")!, prefix: 24 })
    assert.include(parseSubnet("10.89.3.1/24") as string, "host bits set; the network is 10.89.3.0/24")
    assert.include(parseSubnet("10.0.0.0/8") as string, "between /16 and /29")
    assert.include(parseSubnet("10.0.0.0/30") as string, "between /16 and /29")
    assert.include(parseSubnet("10.0.0/24") as string, "not an IPv4 CIDR")
    assert.include(parseSubnet("010.0.0.0/24") as string, "not an IPv4 CIDR")
    assert.include(parseSubnet("fd00::/64") as string, "not an IPv4 CIDR")
  })

  it("picks the lowest /24 of 10.89.0.0/16 that overlaps nothing", () => {
    assert.strictEqual(formatSubnet(autoSubnet([])!), "10.89.0.0/24")
    assert.strictEqual(
      formatSubnet(autoSubnet([subnet("10.89.0.0/24"), subnet("10.89.1.0/25")])!),
      "10.89.2.0/24"
    )
    assert.strictEqual(formatSubnet(autoSubnet([subnet("10.89.0.0/23"), slirpSubnet])!), "10.89.2.0/24")
    assert.isUndefined(autoSubnet([subnet("10.89.0.0/16")]))
  })
})

describe("member addresses", () => {
  it("are the lowest free host address, never the network, gateway or broadcast address", () => {
    const net = subnet("10.89.0.0/29")
    assert.strictEqual(lowestFree(net, []), "10.89.0.2")
    assert.strictEqual(lowestFree(net, ["10.89.0.2", "10.89.0.4"]), "10.89.0.3")
    // .1 is the gateway, .7 the broadcast address: a /29 has five member addresses.
    assert.isUndefined(lowestFree(net, ["10.89.0.2", "10.89.0.3", "10.89.0.4", "10.89.0.5", "10.89.0.6"]))
    assert.strictEqual(lowestFree(subnet("10.90.0.0/16"), ["10.90.0.2"]), "10.90.0.3")
  })
})

describe("host device names", () => {
  it("fit IFNAMSIZ, differ between state directories and members, and are stable", () => {
    const tap = tapName("/a/state", "lab", "ws1")
    assert.strictEqual(tap.length, 15)
    assert.strictEqual(tap, tapName("/a/state", "lab", "ws1"))
    assert.notStrictEqual(tap, tapName("/b/state", "lab", "ws1"))
    assert.notStrictEqual(tap, tapName("/a/state", "lab", "ws2"))
    assert.notStrictEqual(tap, tapName("/a/state", "lab2", "ws1"))
    assert.isAtMost(bridgeName("/a/state").length, 15)
    assert.notStrictEqual(namespaceName("/a/state", "lab"), namespaceName("/b/state", "lab"))
    assert.match(macAddress("/a/state", "lab", "ws1"), /^52:54(:[0-9a-f]{2}){4}$/)
    assert.notStrictEqual(macAddress("/a/state", "lab", "ws1"), macAddress("/a/state", "lab", "ws2"))
  })
})

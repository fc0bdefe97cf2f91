/**
 * IPv4 arithmetic for named networks: subnets, the lowest free member address, and the names of the
 * host-side devices. Pure, so the allocator is tested without a store or a kernel.
 */
import { createHash } from "node:crypto"

export interface Subnet {
  /** The network address, as a 32-bit unsigned number. */
  readonly base: number
  readonly prefix: number
}

const formatIp = (n: number): string => [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".")

/** A dotted quad, or undefined when it is not one (no leading zeros, each part 0-255). */
export const parseIp = (text: string): number | undefined => {
  const parts = text.split(".")
  if (parts.length !== 4) return undefined
  let n = 0
  for (const part of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(part) || Number(part) > 255) return undefined
    n = n * 256 + Number(part)
  }
  return n >>> 0
}

const mask = (prefix: number) => (prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0)

/** `A.B.C.D/N` with 16 <= N <= 29 and no host bits set, or the reason it is not usable. */
export const parseSubnet = (text: string): Subnet | string => {
  const match = /^([0-9.]+)\/([0-9]{1,2})$/.exec(text)
  const ip = match === null ? undefined : parseIp(match[1]!)
  if (match === null || ip === undefined) return `"${text}" is not an IPv4 CIDR (A.B.C.D/N)`
  const prefix = Number(match[2])
  if (prefix < 16 || prefix > 29) return `the prefix of ${text} must be between /16 and /29`
  if ((ip & ~mask(prefix)) >>> 0 !== 0) {
    return `${text} has host bits set; the network is ${formatIp((ip & mask(prefix)) >>> 0)}/${prefix}`
  }
  return { base: ip, prefix }
}

export const formatSubnet = (subnet: Subnet) => `${formatIp(subnet.base)}/${subnet.prefix}`

const size = (subnet: Subnet) => 2 ** (32 - subnet.prefix)

export const overlaps = (a: Subnet, b: Subnet) => a.base < b.base + size(b) && b.base < a.base + size(a)

/** QEMU user networking's own subnet: a named network there would shadow the NAT NIC's routes. */
export const slirpSubnet: Subnet = { base: parseIp("10.0.2.0")!, prefix: 24 }

/** Automatic subnets are /24s of 10.89.0.0/16, lowest free first. */
export const autoSubnet = (taken: ReadonlyArray<Subnet>): Subnet | undefined => {
  const pool = parseIp("10.89.0.0")!
  for (let i = 0; i < 256; i++) {
    const candidate = { base: (pool + i * 256) >>> 0, prefix: 24 }
    if (!taken.some((t) => overlaps(t, candidate))) return candidate
  }
  return undefined
}

/** The gateway is the first host address; members get the others. */
export const gatewayOf = (subnet: Subnet) => formatIp(subnet.base + 1)

/** The lowest host address that is neither the gateway nor taken, or undefined when the subnet is full. */
export const lowestFree = (subnet: Subnet, taken: ReadonlyArray<string>): string | undefined => {
  const used = new Set(taken)
  // Skips the network address, the gateway (.1) and the broadcast address.
  for (let host = 2; host < size(subnet) - 1; host++) {
    const candidate = formatIp(subnet.base + host)
    if (!used.has(candidate)) return candidate
  }
  return undefined
}

const digest = (...parts: ReadonlyArray<string>) =>
  createHash("sha256").update(parts.join("\0")).digest("hex")

/** What names the host-side devices of one state directory: its hash, so two state directories never collide. */
export const stateTag = (root: string) => digest(root).slice(0, 6)

/** The network namespace holding a named network's bridge (`ip netns` names are file names). */
export const namespaceName = (root: string, network: string) => `microagent-${stateTag(root)}-${network}`

/** The prefix of every namespace of one state directory (for the reaper). */
export const namespacePrefix = (root: string) => `microagent-${stateTag(root)}-`

/** The bridge inside the namespace; the namespace is private, the name only has to be recognisable. */
export const bridgeName = (root: string) => `mabr${stateTag(root)}`

/** A member's tap: "mt" + state tag + a hash of workspace and network = 15 characters (IFNAMSIZ - 1). */
export const tapName = (root: string, network: string, workspace: string) =>
  `mt${stateTag(root)}${digest(network, workspace).slice(0, 7)}`

/** A stable, locally administered unicast MAC for a member's NIC (the guest finds its NIC by it). */
export const macAddress = (root: string, network: string, workspace: string) => {
  const hex = digest(root, network, workspace)
  return ["52", "54", hex.slice(0, 2), hex.slice(2, 4), hex.slice(4, 6), hex.slice(6, 8)].join(":")
}

/**
 * The guest's own IPv4 addressing on the user network (`network.ip`, `.subnet`, `.gateway`, `.dns`,
 * `.routes` in the spec): checked here, recorded with the workspace, and given to the guest on its
 * kernel command line, to QEMU's user network (egress off) or to the egress mediator's namespace
 * (broker), which then use the same addresses. Absent: QEMU's usual 10.0.2.15/24 through 10.0.2.2.
 */
import { Either, Schema } from "effect"
import type { EgressMode } from "./Egress.ts"
import { InvalidInput } from "./Errors.ts"

export const Route = Schema.Struct({
  /** `A.B.C.D/N`. */
  destination: Schema.String,
  via: Schema.String
})
export type Route = typeof Route.Type

export const Addressing = Schema.Struct({
  /** The guest's address, `A.B.C.D/N`. */
  ip: Schema.String,
  gateway: Schema.String,
  /** The guest's resolvers (its resolv.conf); empty: the network's own (QEMU's, or the mediator). */
  dns: Schema.Array(Schema.String),
  routes: Schema.Array(Route)
})
export type Addressing = typeof Addressing.Type

/** What a spec or a caller asks for; every field optional. */
export const AddressingRequest = Schema.Struct({
  ip: Schema.optional(Schema.String),
  subnet: Schema.optional(Schema.String),
  gateway: Schema.optional(Schema.String),
  dns: Schema.optional(Schema.Array(Schema.String)),
  routes: Schema.optional(Schema.Array(Schema.String))
})
export interface AddressingRequest {
  readonly ip?: string | undefined
  readonly subnet?: string | undefined
  readonly gateway?: string | undefined
  readonly dns?: ReadonlyArray<string> | undefined
  readonly routes?: ReadonlyArray<string> | undefined
}

/** QEMU's user network: what a guest without its own addressing gets. */
export const defaultAddressing = { ip: "10.0.2.15/24", gateway: "10.0.2.2", resolver: "10.0.2.3" } as const

/** `A.B.C.D` as a number, or undefined. */
export const octets = (text: string): number | undefined => {
  const parts = text.split(".")
  if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) return undefined
  return parts.reduce((n, p) => n * 256 + Number(p), 0)
}

export const ipv4Text = (n: number) =>
  [24, 16, 8, 0].map((shift) => Math.floor(n / 2 ** shift) % 256).join(".")

const maskOf = (prefix: number) => prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0

/** `A.B.C.D/N` as numbers, or why not. */
const cidr = (text: string, what: string): Either.Either<{ address: number; prefix: number }, string> => {
  const [address, prefixText, ...rest] = text.split("/")
  const n = octets(address ?? "")
  const prefix = Number(prefixText)
  return n === undefined || rest.length > 0 || prefixText === undefined || !/^\d{1,2}$/.test(prefixText)
      || prefix > 32
    ? Either.left(`${what} "${text}" is not A.B.C.D/N`)
    : Either.right({ address: n, prefix })
}

/** Whether `address` is in `network/prefix` (all numbers). */
export const within = (address: number, network: number, prefix: number) =>
  ((address & maskOf(prefix)) >>> 0) === ((network & maskOf(prefix)) >>> 0)

/** Ranges a guest network cannot use: this host's loopback, "this network", multicast and reserved. */
const unusable = (address: number) => {
  const first = Math.floor(address / 2 ** 24)
  return first === 0 || first === 127 || first >= 224
}

/**
 * Checks a request against the network mode and the egress mode: under `broker` the mediator is the
 * guest's one resolver, so `dns` is refused there (it answers at the gateway's address instead).
 * Answers undefined when nothing is asked (the default addressing).
 */
export const addressingOf = (
  request: AddressingRequest | undefined,
  context: { readonly network: string; readonly egress: EgressMode }
): Either.Either<Addressing | undefined, InvalidInput> => {
  const asked = request !== undefined
      && [request.ip, request.subnet, request.gateway].some((v) => v !== undefined)
    || (request?.dns ?? []).length > 0 || (request?.routes ?? []).length > 0
  if (!asked || request === undefined) return Either.right(undefined)
  const fail = (message: string) =>
    Either.left(
      new InvalidInput({
        message: `network: ${message}`,
        remediation: "see docs/networking.md for network.ip, .subnet, .gateway, .dns and .routes"
      })
    )
  if (context.network !== "user") {
    return fail(`ip, subnet, gateway, dns and routes are for the user network, not "${context.network}"`)
  }
  if ((request.subnet !== undefined || request.gateway !== undefined) && request.ip === undefined) {
    return fail("a subnet or gateway needs the guest's ip")
  }
  const subnet = request.subnet === undefined ? undefined : cidr(request.subnet, "subnet")
  if (subnet !== undefined && Either.isLeft(subnet)) return fail(subnet.left)
  const ipText = request.ip ?? defaultAddressing.ip
  const ip = cidr(ipText.includes("/") ? ipText : `${ipText}/${subnet?.right.prefix ?? 24}`, "ip")
  if (Either.isLeft(ip)) return fail(ip.left)
  const { address, prefix } = ip.right
  if (prefix < 8 || prefix > 30) return fail(`ip ${ipText}: the prefix must be from /8 to /30`)
  if (unusable(address)) return fail(`ip ${ipText} is in a range a guest network cannot use`)
  const host = address & ~maskOf(prefix)
  if (host === 0 || host === (~maskOf(prefix) >>> 0)) {
    return fail(`ip ${ipText} is its network's own or broadcast address`)
  }
  if (
    subnet !== undefined && (subnet.right.prefix !== prefix || !within(address, subnet.right.address, prefix))
  ) {
    return fail(`ip ${ipText} is not in subnet ${request.subnet}`)
  }
  const network = (address & maskOf(prefix)) >>> 0
  const gateway = request.gateway === undefined
    ? request.ip === undefined ? octets(defaultAddressing.gateway)! : network + 1
    : octets(request.gateway)
  if (gateway === undefined) return fail(`gateway "${request.gateway}" is not A.B.C.D`)
  if (!within(gateway, network, prefix) || gateway === address || gateway === network) {
    return fail(`gateway ${ipv4Text(gateway)} is not another address of ${ipv4Text(network)}/${prefix}`)
  }
  const dns: Array<string> = []
  for (const entry of request.dns ?? []) {
    const n = octets(entry)
    if (n === undefined) return fail(`dns "${entry}" is not A.B.C.D`)
    dns.push(ipv4Text(n))
  }
  if (dns.length > 0 && context.egress === "broker") {
    return fail(
      "dns under egress mediation: the mediator is the guest's one resolver and refuses others; "
        + "use --egress off for resolvers of your own"
    )
  }
  const routes: Array<Route> = []
  for (const entry of request.routes ?? []) {
    const match = /^(\S+)\s+via\s+(\S+)$/.exec(entry.trim())
    const destination = match === null ? undefined : cidr(match[1]!, "route destination")
    const via = match === null ? undefined : octets(match[2]!)
    if (destination === undefined || Either.isLeft(destination) || via === undefined) {
      return fail(`route "${entry}" is not "A.B.C.D/N via A.B.C.D"`)
    }
    if (!within(via, network, prefix)) {
      return fail(`route "${entry}": ${ipv4Text(via)} is not on ${ipv4Text(network)}/${prefix}`)
    }
    const d = destination.right
    routes.push({
      destination: `${ipv4Text((d.address & maskOf(d.prefix)) >>> 0)}/${d.prefix}`,
      via: ipv4Text(via)
    })
  }
  return Either.right({ ip: `${ipv4Text(address)}/${prefix}`, gateway: ipv4Text(gateway), dns, routes })
}

/** The network QEMU's user NAT (egress off) serves for this addressing: its net, host and resolver. */
export const slirpNetwork = (addressing: Addressing) => {
  const { address, prefix } = Either.getOrThrow(cidr(addressing.ip, "ip"))
  const network = (address & maskOf(prefix)) >>> 0
  // QEMU's resolver is the network's third address, unless that is the guest's or the gateway's.
  const candidates = [3, 4, 5].map((i) => ipv4Text(network + i))
  const resolver = candidates.find((c) => c !== ipv4Text(address) && c !== addressing.gateway)!
  return { net: `${ipv4Text(network)}/${prefix}`, host: addressing.gateway, resolver }
}

/** Whether an addressing is QEMU's own network (10.0.2.0/24 through 10.0.2.2), whatever the guest's address. */
const inDefaultNetwork = (a: Addressing) =>
  a.gateway === defaultAddressing.gateway && a.ip.startsWith("10.0.2.") && a.ip.endsWith("/24")
  && a.dns.length === 0 && a.routes.length === 0

/**
 * Where the egress mediator answers DNS: QEMU's resolver address (10.0.2.3) on QEMU's own network, as
 * for a guest without addressing of its own, and the gateway's on any other.
 */
export const mediatedResolver = (a: Addressing | undefined): string =>
  a === undefined || inDefaultNetwork(a) ? defaultAddressing.resolver : a.gateway

/**
 * The resolvers a guest with its own addressing is given (its resolv.conf): its own, else the egress
 * mediator's when its network is mediated, else those of QEMU's NAT on its network.
 */
export const guestResolvers = (a: Addressing, mediated: boolean): ReadonlyArray<string> =>
  a.dns.length > 0 ? a.dns : [mediated ? mediatedResolver(a) : slirpNetwork(a).resolver]

/** A route as the guest's agent takes it: `DST/N@GW`. */
export const routeSpec = (r: Route): string => `${r.destination}@${r.via}`

/** 32-bit FNV-1a of a string's UTF-16 units: a spread, not a secret. */
const fnv1a = (text: string) => {
  let h = 0x811c9dc5
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i)
    h = Math.imul(h, 0x01000193) >>> 0
  }
  return h
}

/**
 * The MAC of a workspace's user-network NIC: QEMU's 52:54:00 prefix and three bytes drawn from its
 * name, so that every workspace (and each copy resumed from another's memory) has its own.
 */
export const userNicMac = (workspace: string): string => {
  const h = fnv1a(workspace)
  return [
    "52",
    "54",
    "00",
    ...[16, 8, 0].map((shift) => ((h >>> shift) & 0xff).toString(16).padStart(2, "0"))
  ]
    .join(":")
}

/**
 * The user-network addressing of a copy resumed from `source`'s memory (a fork's child number
 * `index`, counted from 0, or a `create --from-snapshot`): on QEMU's own network, an address of its own
 * (10.0.2.16 onwards, never the source's), which the resumed guest takes over from its source's before
 * it counts as running. Addressing a user chose on another network is kept as it is.
 */
export const copyAddressing = (source: Addressing | undefined, index: number): Addressing | undefined => {
  if (source !== undefined && !inDefaultNetwork(source)) return source
  const taken = source?.ip ?? defaultAddressing.ip
  // 10.0.2.16 … 10.0.2.238 without the source's: copy i takes the i-th, so siblings never share one.
  const free = Array.from({ length: 223 }, (_, i) => `10.0.2.${16 + i}/24`).filter((ip) => ip !== taken)
  return { ip: free[index % free.length]!, gateway: defaultAddressing.gateway, dns: [], routes: [] }
}

/** A copy's index when it is not one of a fork's numbered children: a spread drawn from its name. */
export const copyIndexOf = (name: string): number => fnv1a(name) % 223

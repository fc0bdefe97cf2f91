/**
 * "The inside" of egress mediation, for host-side code that dials on a guest's behalf (the credential
 * broker's CONNECT tunnel): loopback, 0/8, RFC 1918, link-local (with the metadata address), CGNAT,
 * multicast and reserved ranges (224/4, 240/4), and every address of the host itself: the ranges the
 * egress mediator (guest/host/egress.c) applies in C, with its class names. IPv4 only: anything else
 * is inside.
 */
import * as NodeNet from "node:net"

const ranges: ReadonlyArray<readonly [string, number, string]> = [
  ["0.0.0.0", 8, "this-network"],
  ["127.0.0.0", 8, "loopback"],
  ["10.0.0.0", 8, "private"],
  ["172.16.0.0", 12, "private"],
  ["192.168.0.0", 16, "private"],
  ["169.254.0.0", 16, "link-local"],
  ["100.64.0.0", 10, "cgnat"],
  ["224.0.0.0", 4, "multicast-or-reserved"],
  ["240.0.0.0", 4, "multicast-or-reserved"]
]

const toNumber = (ip: string) => ip.split(".").reduce((n, part) => n * 256 + Number(part), 0)

/** Why `ip` is inside (a short class name), or undefined for the public internet. */
export const insideReason = (ip: string, hostAddresses: ReadonlyArray<string>): string | undefined => {
  if (!NodeNet.isIPv4(ip)) return "not-ipv4"
  if (hostAddresses.includes(ip)) return "host"
  const n = toNumber(ip)
  for (const [base, bits, reason] of ranges) {
    const size = 2 ** (32 - bits)
    const start = toNumber(base)
    if (n >= start && n < start + size) return reason
  }
  return undefined
}

/**
 * Test peers for egress mediation, all on this host and invisible to the rest of the network:
 *
 * - a DNS server on 127.0.0.1 answering A questions from a fixed table (the mediator forwards to it
 *   through `MICROAGENT_EGRESS_DNS_UPSTREAM`), so a name can resolve to an inside address (DNS
 *   rebinding) or to the test host below;
 * - a "public" test host: a network namespace joined to the host by a veth pair, holding a
 *   documentation address (198.51.100.0/24, which the mediator does not count as inside) and an HTTP
 *   server on it. The host side of the pair is one of the host's own addresses, so it is inside.
 */
import * as NodeChild from "node:child_process"
import * as NodeDgram from "node:dgram"

export interface DnsServer {
  readonly port: number
  /** Every name asked, lower case, in order. */
  readonly asked: Array<string>
  readonly close: () => void
}

const readName = (message: Buffer, offset: number): { name: string; end: number } => {
  const labels: Array<string> = []
  let at = offset
  while (at < message.length && message[at]! !== 0) {
    const length = message[at]!
    labels.push(message.subarray(at + 1, at + 1 + length).toString("latin1"))
    at += 1 + length
  }
  return { name: labels.join(".").toLowerCase(), end: at + 1 }
}

/** Answers A questions for `table`'s names; other A names NXDOMAIN, other types an empty NOERROR. */
export const startDnsServer = (table: Record<string, string>): Promise<DnsServer> =>
  new Promise((resolve, reject) => {
    const socket = NodeDgram.createSocket("udp4")
    const asked: Array<string> = []
    socket.on("message", (query, peer) => {
      if (query.length < 17) return
      const { end, name } = readName(query, 12)
      const qtype = query.readUInt16BE(end)
      asked.push(name)
      const question = query.subarray(12, end + 4)
      const address = table[name]
      const known = qtype === 1 && address !== undefined
      const header = Buffer.alloc(12)
      header.writeUInt16BE(query.readUInt16BE(0), 0)
      // QR, RD copied, RA; NXDOMAIN for an unknown A name.
      header.writeUInt16BE(0x8080 | (query[2]! & 1) << 8 | (qtype === 1 && !known ? 3 : 0), 2)
      header.writeUInt16BE(1, 4)
      header.writeUInt16BE(known ? 1 : 0, 6)
      const answer = known
        ? Buffer.concat([
          Buffer.from([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]),
          Buffer.from(address.split(".").map(Number))
        ])
        : Buffer.alloc(0)
      socket.send(Buffer.concat([header, question, answer]), peer.port, peer.address)
    })
    socket.once("error", reject)
    socket.bind(
      0,
      "127.0.0.1",
      () => resolve({ port: socket.address().port, asked, close: () => socket.close() })
    )
  })

export interface TestHost {
  readonly address: string
  readonly hostSide: string
  readonly port: number
  readonly close: () => void
}

const ip = (...args: Array<string>) => NodeChild.execFileSync("ip", args, { stdio: "pipe" })

/**
 * A network namespace `name` joined to the host by a veth pair named after `tag`: the host's side is
 * `${prefix}.1/24` (so it is one of the host's own addresses), the namespace's `${prefix}.10/24`. What an
 * earlier run left under these names goes first; `remove` takes both down.
 */
export const peerNamespace = (name: string, prefix: string, tag: string) => {
  const hostIf = `${tag}h`
  const nsIf = `${tag}n`
  const remove = () => {
    NodeChild.spawnSync("ip", ["netns", "delete", name])
    NodeChild.spawnSync("ip", ["link", "delete", hostIf])
  }
  remove()
  ip("netns", "add", name)
  ip("link", "add", hostIf, "type", "veth", "peer", "name", nsIf)
  ip("link", "set", nsIf, "netns", name)
  ip("addr", "add", `${prefix}.1/24`, "dev", hostIf)
  ip("link", "set", hostIf, "up")
  ip("-n", name, "addr", "add", `${prefix}.10/24`, "dev", nsIf)
  ip("-n", name, "link", "set", nsIf, "up")
  ip("-n", name, "link", "set", "lo", "up")
  return { address: `${prefix}.10`, hostSide: `${prefix}.1`, remove }
}

/**
 * A namespace `name` reachable from the host at `${prefix}.10`, the host being `${prefix}.1` (`prefix`
 * 198.51.100 unless given), with an HTTP server on port 8080: `/` answers `hello-from-test-host`, `/big`
 * 200000 bytes, `/bytes/N` N bytes (streamed, with a content-length).
 */
export const startTestHost = async (
  name: string,
  options: { readonly prefix?: string } = {}
): Promise<TestHost> => {
  const prefix = options.prefix ?? "198.51.100"
  const peer = peerNamespace(name, prefix, `th${name.slice(-8)}`)
  const server = NodeChild.spawn("ip", [
    "netns",
    "exec",
    name,
    process.execPath,
    "-e",
    `const chunk = Buffer.alloc(65536, 120)
    require("node:http").createServer((q, s) => {
      const bytes = /^\\/bytes\\/(\\d+)$/.exec(q.url)
      if (bytes === null) return s.end(q.url === "/big" ? "x".repeat(200000) : "hello-from-test-host\\n")
      let left = Number(bytes[1])
      s.writeHead(200, { "content-length": left })
      const pump = () => {
        while (left > 0) {
          const n = Math.min(left, chunk.length)
          left -= n
          if (!s.write(n === chunk.length ? chunk : chunk.subarray(0, n))) return s.once("drain", pump)
        }
        s.end()
      }
      pump()
    }).listen(8080, "${prefix}.10", () => console.log("ready"))`
  ], { stdio: ["ignore", "pipe", "inherit"] })
  await new Promise<void>((resolve, reject) => {
    server.stdout.on("data", (d: Buffer) => d.toString().includes("ready") && resolve())
    server.once("exit", (code) => reject(new Error(`the test host's server exited ${code}`)))
  })
  return {
    address: peer.address,
    hostSide: peer.hostSide,
    port: 8080,
    close: () => {
      server.kill("SIGKILL")
      peer.remove()
    }
  }
}

/**
 * Published ports: `[ip:]hostPort:guestPort[/tcp]` parsed into `PublishedPort`, and the probe that
 * binds every host port once before a VM boots, so a port in use is a `Conflict` naming it instead of
 * a QEMU failure after the fact.
 */
import { Effect, Either } from "effect"
import * as Net from "node:net"
import { Conflict, InvalidInput } from "./Errors.ts"
import { PublishedPort } from "./Workspace.ts"

const usage = "write [IP:]HOSTPORT:GUESTPORT[/tcp], e.g. -p 8080:80 or -p 127.0.0.1:8080:80"

const invalid = (text: string, why: string) =>
  new InvalidInput({ message: `invalid --publish "${text}": ${why}`, remediation: usage })

const port = (text: string, what: string, whole: string): Either.Either<number, InvalidInput> => {
  if (!/^[0-9]{1,5}$/.test(text)) return Either.left(invalid(whole, `the ${what} "${text}" is not a number`))
  const n = Number(text)
  return n >= 1 && n <= 65535
    ? Either.right(n)
    : Either.left(invalid(whole, `the ${what} ${n} is outside 1-65535`))
}

/** Host ports are bound on loopback unless an address is given. */
export const defaultHostIp = "127.0.0.1"

export const parsePublish = (text: string): Either.Either<PublishedPort, InvalidInput> => {
  const slash = text.lastIndexOf("/")
  const protocol = slash < 0 ? "tcp" : text.slice(slash + 1).toLowerCase()
  if (protocol !== "tcp") {
    return Either.left(
      invalid(text, protocol === "udp" ? "only TCP ports can be published" : `unknown protocol "${protocol}"`)
    )
  }
  const parts = (slash < 0 ? text : text.slice(0, slash)).split(":")
  if (parts.length < 2 || parts.length > 3) {
    return Either.left(invalid(text, "expected two or three ':'-separated parts"))
  }
  const [hostIp, hostPort, guestPort] = parts.length === 3 ? parts : [defaultHostIp, ...parts]
  if (!Net.isIPv4(hostIp!)) {
    return Either.left(invalid(text, `the host address "${hostIp}" is not an IPv4 address`))
  }
  return Either.gen(function*() {
    const host = yield* port(hostPort!, "host port", text)
    const guest = yield* port(guestPort!, "guest port", text)
    return new PublishedPort({ hostIp: hostIp!, hostPort: host, guestPort: guest, protocol: "tcp" })
  })
}

/** Parses every `-p` value; the same host address and port twice is an error. */
export const parsePublishes = (texts: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const ports: Array<PublishedPort> = []
    for (const text of texts) {
      const parsed = yield* parsePublish(text)
      const clash = ports.find((p) =>
        p.hostPort === parsed.hostPort
        && (p.hostIp === parsed.hostIp || p.hostIp === "0.0.0.0" || parsed.hostIp === "0.0.0.0")
      )
      if (clash !== undefined) {
        return yield* invalid(text, `host port ${parsed.hostPort} is published twice`)
      }
      ports.push(parsed)
    }
    return ports
  })

/** Binds and releases one host port; resolves to the error code when it cannot be bound. */
const tryBind = (hostIp: string, hostPort: number) =>
  Effect.async<string | undefined>((resume) => {
    const server = Net.createServer()
    server.once(
      "error",
      (error: NodeJS.ErrnoException) => resume(Effect.succeed(error.code ?? error.message))
    )
    server.listen({ host: hostIp, port: hostPort, exclusive: true }, () => {
      server.close(() => resume(Effect.succeed(undefined)))
    })
  })

/** Fails with `Conflict` (port in use) or `InvalidInput` (address not on this host) before anything boots. */
export const probePorts = Effect.fn("probePorts")(function*(ports: ReadonlyArray<PublishedPort>) {
  for (const p of ports) {
    const problem = yield* tryBind(p.hostIp, p.hostPort)
    if (problem === undefined) continue
    if (problem === "EADDRINUSE") {
      return yield* new Conflict({
        message: `host port ${p.hostIp}:${p.hostPort} is already in use`,
        remediation:
          `stop whatever listens on ${p.hostPort}, or publish another host port (-p OTHER:${p.guestPort})`
      })
    }
    if (problem === "EACCES") {
      return yield* new Conflict({
        message: `host port ${p.hostIp}:${p.hostPort} needs privileges to bind`,
        remediation: "publish a host port of 1024 or above, or run as root"
      })
    }
    return yield* new InvalidInput({
      message: `cannot bind host address ${p.hostIp}:${p.hostPort}: ${problem}`,
      remediation: "give an address of this host (127.0.0.1 or 0.0.0.0 for all)"
    })
  }
})

/**
 * The same publications on host ports the kernel picks free now (each listener held until all are
 * picked, so no two are the same): for a fork's children, which cannot share their parent's host ports.
 */
export const freshHostPorts = (ports: ReadonlyArray<PublishedPort>) =>
  Effect.scoped(Effect.forEach(ports, (p) =>
    Effect.acquireRelease(
      Effect.async<{ readonly server: Net.Server; readonly port: PublishedPort }, Conflict>((resume) => {
        const server = Net.createServer()
        server.once("error", (error: NodeJS.ErrnoException) =>
          resume(Effect.fail(
            new Conflict({
              message: `no free host port on ${p.hostIp} for guest port ${p.guestPort}: ${
                error.code ?? error.message
              }`,
              remediation: "free some host ports, or fork a workspace that publishes none"
            })
          )))
        server.listen({ host: p.hostIp, port: 0, exclusive: true }, () => {
          const address = server.address()
          const hostPort = typeof address === "object" && address !== null ? address.port : 0
          resume(Effect.succeed({ server, port: new PublishedPort({ ...p, hostPort }) }))
        })
      }),
      (held) => Effect.async<void>((resume) => void held.server.close(() => resume(Effect.void)))
    ).pipe(Effect.map((held) => held.port))))

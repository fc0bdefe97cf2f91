/**
 * The host side of named networks, driven with iproute2: one network namespace per named network
 * holding a bridge (so no address of it is on the host's own stack), and each member's tap, which
 * QEMU creates on the host (non-persistent: it vanishes with QEMU) and which is then moved into the
 * namespace and enslaved to the bridge. Deleting the namespace deletes the bridge and any tap in it.
 */
import { Effect } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import { Permanent, Unsupported } from "../../domain/Errors.ts"
import { bridgeName, namespaceName, namespacePrefix } from "./Addressing.ts"

const ipBinary = () =>
  ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].find((path) => NodeFs.existsSync(path))

/** CAP_NET_ADMIN (bit 12) in this process's effective set. */
const hasNetAdmin = (): boolean => {
  try {
    const line = NodeFs.readFileSync("/proc/self/status", "utf8").split("\n").find((l) =>
      l.startsWith("CapEff:")
    )
    return line !== undefined && (BigInt(`0x${line.split(/\s+/)[1]}`) & (1n << 12n)) !== 0n
  } catch {
    return false
  }
}

/** Why this host cannot plumb named networks, or undefined when it can. */
export const fabricProblem = (): { readonly message: string; readonly remediation: string } | undefined => {
  if (ipBinary() === undefined) {
    return {
      message: "named networks need the ip command (iproute2)",
      remediation: "apt-get install iproute2"
    }
  }
  if (!NodeFs.existsSync("/dev/net/tun")) {
    return { message: "named networks need /dev/net/tun for tap devices", remediation: "modprobe tun" }
  }
  if (!hasNetAdmin()) {
    return {
      message: "named networks need root or CAP_NET_ADMIN (network namespaces, bridges and taps)",
      remediation: "run as root, or use --network user"
    }
  }
  return undefined
}

export const requireFabric = Effect.suspend(() => {
  const problem = fabricProblem()
  return problem === undefined
    ? Effect.void
    : Effect.fail(new Unsupported({ ...problem, backend: "qemu", feature: "named networks" }))
})

/** Runs `ip ARGS`; resolves to stdout, or fails with its stderr. */
const ip = (args: ReadonlyArray<string>) =>
  Effect.async<string, Permanent>((resume) => {
    const binary = ipBinary() ?? "ip"
    NodeChild.execFile(binary, [...args], { timeout: 10_000 }, (error, stdout, stderr) => {
      if (error === null) return resume(Effect.succeed(stdout))
      resume(Effect.fail(
        new Permanent({
          message: `ip ${args.join(" ")} failed: ${(stderr || error.message).trim()}`,
          remediation: "check `microagent doctor`; `microagent gc` removes leftover namespaces"
        })
      ))
    })
  })

/** Already there (a concurrent start made it): fine. */
const tolerateExisting = <A>(effect: Effect.Effect<A, Permanent>) =>
  effect.pipe(
    Effect.catchIf((e) => /File exists|already exists|already assigned/.test(e.message), () => Effect.void)
  )

/** The namespaces of one state directory that exist now. */
export const namespaces = (root: string) =>
  ip(["netns", "list"]).pipe(
    Effect.map((out) =>
      out.split("\n").map((line) => line.trim().split(/\s+/)[0] ?? "").filter((n) =>
        n.startsWith(namespacePrefix(root))
      )
    )
  )

/** The namespace and bridge of a network, created if missing; the bridge holds the gateway address. */
export const ensureBridge = Effect.fn("Fabric.ensureBridge")(
  function*(root: string, network: string, gateway: string, prefix: number) {
    const ns = namespaceName(root, network)
    const bridge = bridgeName(root)
    yield* tolerateExisting(ip(["netns", "add", ns]))
    yield* tolerateExisting(ip(["-n", ns, "link", "add", bridge, "type", "bridge"]))
    yield* tolerateExisting(ip(["-n", ns, "addr", "add", `${gateway}/${prefix}`, "dev", bridge]))
    yield* ip(["-n", ns, "link", "set", "lo", "up"])
    yield* ip(["-n", ns, "link", "set", bridge, "up"])
    return ns
  }
)

/** Moves QEMU's tap into the network's namespace and plugs it into the bridge. */
export const attachTap = Effect.fn("Fabric.attachTap")(function*(
  root: string,
  network: string,
  tap: string,
  /** The namespace QEMU runs in, when not the host's (egress mediation): its taps are made there. */
  from?: string
) {
  const ns = namespaceName(root, network)
  yield* ip([...(from === undefined ? [] : ["-n", from]), "link", "set", tap, "netns", ns])
  yield* ip(["-n", ns, "link", "set", tap, "master", bridgeName(root), "up"])
})

/** Deletes a namespace (and the bridge and taps in it); gone already is fine. */
export const removeNamespace = (ns: string) =>
  ip(["netns", "delete", ns]).pipe(
    Effect.catchIf((e) => /No such file|not found|Invalid netns/i.test(e.message), () => Effect.void)
  )

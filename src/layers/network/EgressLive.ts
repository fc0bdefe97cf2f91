/**
 * Egress mediation with a network namespace per workspace, driven with iproute2 and iptables inside
 * that namespace only (the host's own firewall and routes are never touched):
 *
 * - the guest's NIC is a tap created in the namespace, holding the addresses the guest already
 *   expects of QEMU's user network (gateway 10.0.2.2, resolver 10.0.2.3; the guest is 10.0.2.15);
 * - every guest TCP flow is REDIRECTed to the mediator, other UDP is TPROXYed to it (so refused
 *   datagrams are audited with their real destination), DNS to 10.0.2.3 reaches its resolver, and
 *   everything else (ICMP, IPv6, forwarding) is dropped; the namespace has no route anywhere;
 * - the mediator (guest/host/egress.c) opens those sockets inside the namespace and dials upstream
 *   from the host's namespace, classifying the address actually dialled.
 *
 * The mediator watches the VMM's pid file and removes the namespace when the VM is gone, so nothing
 * outlives the VM even when no process of ours is there to clean up; `reap` covers crashes.
 */
import { Effect, Layer, Redacted, Schema } from "effect"
import * as NodeChild from "node:child_process"
import { createHash } from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { mediatedResolver } from "../../domain/Addressing.ts"
import { defaultEgress, EgressRecord } from "../../domain/Egress.ts"
import { Permanent, Unsupported } from "../../domain/Errors.ts"
import type { Workspace } from "../../domain/Workspace.ts"
import { Egress, type EgressAttachment, type EgressValues } from "../../services/Egress.ts"
import { Home } from "../../services/Home.ts"
import { startDetached } from "../process/Detached.ts"
import { installedFile } from "../process/Installed.ts"
import { isAlive, startTimeOf } from "../process/Processes.ts"
import { stateTag } from "./Addressing.ts"

/** The addresses the guest sees, the same as QEMU's user network gives it. */
const mediatedNetwork = {
  guest: "10.0.2.15",
  gateway: "10.0.2.2",
  resolver: "10.0.2.3",
  prefix: 24
} as const

/**
 * A workspace's mediated addresses: QEMU's usual ones, or its own addressing, where the mediator
 * answers DNS at `mediatedResolver`'s address (its guest is told so on its command line): QEMU's
 * 10.0.2.3 on QEMU's network, so a copy resumed from another workspace's memory keeps its resolver.
 */
const mediatedAddresses = (workspace: Workspace) => {
  const a = workspace.addressing
  if (a === undefined) return mediatedNetwork
  const [guest, prefix] = a.ip.split("/")
  return { guest: guest!, gateway: a.gateway, resolver: mediatedResolver(a), prefix: Number(prefix) }
}

/** The mediated gateway's MAC (locally administered), the same in every namespace. */
const gatewayMac = "02:6d:61:00:02:02"

const tcpPort = 15001
const udpPort = 15002
const tproxyMark = "0x1/0x1"
const tproxyTable = "100"

/** Namespaces of egress are named apart from named networks' (whose tag follows the prefix directly). */
export const egressNamespacePrefix = (root: string) => `microagent-egress-${stateTag(root)}-`
export const egressNamespace = (root: string, workspace: string) =>
  `${egressNamespacePrefix(root)}${workspace}`

/** "me" + state tag + 7 hex of the workspace name = 15 characters (IFNAMSIZ - 1). */
export const egressTap = (root: string, workspace: string) =>
  `me${stateTag(root)}${createHash("sha256").update(workspace).digest("hex").slice(0, 7)}`

const binaryOf = (candidates: ReadonlyArray<string>) => candidates.find((path) => NodeFs.existsSync(path))
const ipBinary = () => binaryOf(["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"])
const iptablesRestoreBinary = () =>
  binaryOf(["/usr/sbin/iptables-restore", "/sbin/iptables-restore", "/usr/bin/iptables-restore"])
const ip6tablesRestoreBinary = () =>
  binaryOf(["/usr/sbin/ip6tables-restore", "/sbin/ip6tables-restore", "/usr/bin/ip6tables-restore"])

/** `$MICROAGENT_EGRESS_BINARY`, else guest/build or libexec beside an ancestor of this module. */
const mediatorBinary = (): string | undefined =>
  installedFile("MICROAGENT_EGRESS_BINARY", ["guest/build/microagent-egress", "libexec/microagent-egress"])

/** CAP_NET_ADMIN (12) and CAP_SYS_ADMIN (21, for setns and the namespace mount) in the effective set. */
const hasCapabilities = (): boolean => {
  try {
    const line = NodeFs.readFileSync("/proc/self/status", "utf8").split("\n").find((l) =>
      l.startsWith("CapEff:")
    )
    if (line === undefined) return false
    const caps = BigInt(`0x${line.split(/\s+/)[1]}`)
    return (caps & (1n << 12n)) !== 0n && (caps & (1n << 21n)) !== 0n
  } catch {
    return false
  }
}

const optOut =
  "or run with --egress off to start without mediation (the guest then reaches the host and its networks)"

const egressProblem = (): { readonly message: string; readonly remediation: string } | undefined => {
  if (ipBinary() === undefined) {
    return {
      message: "egress mediation needs the ip command",
      remediation: `apt-get install iproute2, ${optOut}`
    }
  }
  if (iptablesRestoreBinary() === undefined) {
    return { message: "egress mediation needs iptables", remediation: `apt-get install iptables, ${optOut}` }
  }
  if (!NodeFs.existsSync("/dev/net/tun")) {
    return { message: "egress mediation needs /dev/net/tun", remediation: `modprobe tun, ${optOut}` }
  }
  if (mediatorBinary() === undefined) {
    return {
      message: "the egress mediator binary (microagent-egress) is missing",
      remediation: `build it with \`make -C guest\`, ${optOut}`
    }
  }
  if (!hasCapabilities()) {
    return {
      message:
        "egress mediation needs root, or CAP_NET_ADMIN and CAP_SYS_ADMIN (network namespaces, taps, setns)",
      remediation: `run as root, ${optOut}`
    }
  }
  return undefined
}

/** Runs a command, with `input` on its stdin (a batch, a ruleset) when given. */
const run = (binary: string, args: ReadonlyArray<string>, input?: string) =>
  Effect.async<string, Permanent>((resume) => {
    const child = NodeChild.execFile(binary, [...args], { timeout: 15_000 }, (error, stdout, stderr) => {
      if (error === null) return resume(Effect.succeed(stdout))
      resume(Effect.fail(
        new Permanent({
          message: `${NodePath.basename(binary)} ${args.join(" ")} failed: ${
            (stderr || error.message).trim()
          }`,
          remediation: `check \`microagent doctor\`; \`microagent gc\` removes leftovers; ${optOut}`
        })
      ))
    })
    // A command that exits before reading all of it fails above; the pipe's error is not another one.
    child.stdin?.on("error", () => {})
    child.stdin?.end(input ?? "")
  })

const ip = (args: ReadonlyArray<string>, input?: string) => run(ipBinary() ?? "ip", args, input)
const inNamespace = (ns: string, binary: string | undefined, args: ReadonlyArray<string>, input?: string) =>
  ip(["netns", "exec", ns, binary ?? "false", ...args], input)

/**
 * The rules of one namespace, as one `iptables-restore` input: everything from the guest goes to the
 * mediator or is dropped (counted).
 */
export const namespaceRuleset = (tap: string, resolver: string = mediatedNetwork.resolver): string =>
  [
    "*nat",
    ":PREROUTING ACCEPT [0:0]",
    ":INPUT ACCEPT [0:0]",
    ":OUTPUT ACCEPT [0:0]",
    ":POSTROUTING ACCEPT [0:0]",
    `-A PREROUTING -i ${tap} -p tcp -j REDIRECT --to-ports ${tcpPort}`,
    "COMMIT",
    "*mangle",
    ":PREROUTING ACCEPT [0:0]",
    ":INPUT ACCEPT [0:0]",
    ":FORWARD ACCEPT [0:0]",
    ":OUTPUT ACCEPT [0:0]",
    ":POSTROUTING ACCEPT [0:0]",
    `-A PREROUTING -i ${tap} -p udp -d ${resolver} --dport 53 -j RETURN`,
    `-A PREROUTING -i ${tap} -p udp -j TPROXY --on-port ${udpPort} --on-ip 0.0.0.0 --tproxy-mark ${tproxyMark}`,
    "COMMIT",
    "*filter",
    ":INPUT DROP [0:0]",
    ":FORWARD DROP [0:0]",
    ":OUTPUT ACCEPT [0:0]",
    "-A INPUT -i lo -j ACCEPT",
    "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
    `-A INPUT -i ${tap} -p tcp --dport ${tcpPort} -j ACCEPT`,
    `-A INPUT -i ${tap} -p udp -d ${resolver} --dport 53 -j ACCEPT`,
    `-A INPUT -i ${tap} -p udp -m mark --mark ${tproxyMark} -j ACCEPT`,
    // The policy drops the rest; this rule only counts it (`iptables -L -v` in the namespace).
    "-A INPUT -j DROP",
    "COMMIT",
    ""
  ].join("\n")

/** IPv6 in the namespace: nothing in or through (the tap has no v6 address; v6 is off there too). */
const namespaceRuleset6 = [
  "*filter",
  ":INPUT DROP [0:0]",
  ":FORWARD DROP [0:0]",
  ":OUTPUT ACCEPT [0:0]",
  "COMMIT",
  ""
]
  .join("\n")

/** `$MICROAGENT_MITM_SCRIPT`, else the bundle beside this module or in an ancestor's bin/. */
const mitmScript = (): string | undefined =>
  installedFile("MICROAGENT_MITM_SCRIPT", ["microagent-mitm.mjs", "bin/microagent-mitm.mjs"])

/** `mitm`: the interceptor's pid and start time, its socket, and the CA certificate it writes. */
const mitmPidFile = (runtimeDir: string) => NodePath.join(runtimeDir, "egress-mitm.pid")
const mitmSocket = (runtimeDir: string) => NodePath.join(runtimeDir, "egress-mitm.sock")
const mitmCaFile = (runtimeDir: string) => NodePath.join(runtimeDir, "egress-ca.pem")

const stopInterceptor = (runtimeDir: string) =>
  Effect.sync(() => {
    try {
      const [pid, startTime] = NodeFs.readFileSync(mitmPidFile(runtimeDir), "utf8").trim().split(" ")
      if (isAlive(Number(pid), startTime || undefined)) process.kill(Number(pid), "SIGKILL")
    } catch {
      // None, or gone.
    }
    for (const file of [mitmPidFile(runtimeDir), mitmSocket(runtimeDir), mitmCaFile(runtimeDir)]) {
      NodeFs.rmSync(file, { force: true })
    }
  })

/**
 * Starts the interceptor of a `mitm` workspace (src/bridge/MitmBridge.ts) with its swaps' values on
 * its stdin, and returns its CA's certificate once it listens.
 */
const startInterceptor = (workspace: Workspace, runtimeDir: string, auditLog: string, values: EgressValues) =>
  Effect.gen(function*() {
    const script = mitmScript()
    if (script === undefined) {
      return yield* new Permanent({
        message: "the TLS interceptor (microagent-mitm.mjs) is missing",
        remediation: "reinstall microagent, or set MICROAGENT_MITM_SCRIPT; --egress broker needs none"
      })
    }
    const policy = workspace.egress ?? defaultEgress
    const upstreamCa = process.env.MICROAGENT_EGRESS_MITM_UPSTREAM_CA
    const config = {
      workspace: workspace.name,
      socket: mitmSocket(runtimeDir),
      auditLog,
      caFile: mitmCaFile(runtimeDir),
      vmmPidFile: NodePath.join(runtimeDir, "qemu.pid"),
      ...(upstreamCa === undefined || upstreamCa === "" ? {} : { upstreamCa }),
      swaps: policy.swaps.map((s) => ({ ...s }))
    }
    const wanted = new Set(policy.swaps.map((s) => s.secret))
    const input: Record<string, string> = {}
    for (const { name, value } of values) {
      if (wanted.has(name)) input[name] = Buffer.from(Redacted.value(value)).toString("base64")
    }
    const log = NodePath.join(runtimeDir, "egress-mitm.log")
    const pid = yield* startDetached({
      script,
      args: [JSON.stringify(config)],
      input: JSON.stringify(input),
      log,
      readyTimeoutMs: 10_000
    }).pipe(
      Effect.mapError((why) =>
        new Permanent({
          message: `workspace ${workspace.name}: the TLS interceptor did not start: ${why}`,
          remediation: `see ${log}; --egress broker runs without interception`
        })
      )
    )
    return yield* Effect.sync(() => {
      NodeFs.writeFileSync(mitmPidFile(runtimeDir), `${pid} ${startTimeOf(pid) ?? ""}\n`, { mode: 0o600 })
      return NodeFs.readFileSync(mitmCaFile(runtimeDir), "utf8")
    })
  })

/** The mediator's pid, for inspection (tests, an operator): release finds mediators by their arguments. */
const mediatorPidFile = (runtimeDir: string) => NodePath.join(runtimeDir, "egress.pid")

/** The mediators serving namespace `ns`, found by their arguments: a runtime directory removed with its pid file (a delete, a gc) does not hide one. */
const mediatorsOf = (ns: string): ReadonlyArray<number> => {
  const wanted = `\0--netns\0/run/netns/${ns}\0`
  const found: Array<number> = []
  for (const entry of NodeFs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const argv = NodeFs.readFileSync(`/proc/${entry}/cmdline`, "utf8")
      if (argv.split("\0", 1)[0]!.endsWith("microagent-egress") && argv.includes(wanted)) {
        found.push(Number(entry))
      }
    } catch {
      // Gone in between.
    }
  }
  return found
}

const stopMediator = (runtimeDir: string, ns: string) =>
  Effect.sync(() => {
    for (const pid of mediatorsOf(ns)) {
      try {
        // Its own process group: the mediator and its per-connection children.
        process.kill(-pid, "SIGKILL")
      } catch {
        // A per-connection child (its group is the mediator's), or gone in between.
        try {
          process.kill(pid, "SIGKILL")
        } catch {
          // Gone.
        }
      }
    }
    NodeFs.rmSync(mediatorPidFile(runtimeDir), { force: true })
  })

/** Starts the mediator detached (it outlives this process, like the VMM) and waits for its "ready". */
const startMediator = (binary: string, args: ReadonlyArray<string>, runtimeDir: string) =>
  Effect.async<number, Permanent>((resume) => {
    const errors = NodePath.join(runtimeDir, "egress.err")
    const umask = process.umask(0o077)
    let errFd: number
    let child: NodeChild.ChildProcess
    try {
      errFd = NodeFs.openSync(errors, "w", 0o600)
      child = NodeChild.spawn(binary, [...args], { detached: true, stdio: ["ignore", "pipe", errFd] })
    } finally {
      process.umask(umask)
    }
    NodeFs.closeSync(errFd)
    let settled = false
    const fail = (why: string) => {
      if (settled) return
      settled = true
      let detail = ""
      try {
        detail = NodeFs.readFileSync(errors, "utf8").trim()
      } catch {
        // No stderr.
      }
      resume(Effect.fail(
        new Permanent({
          message: `the egress mediator did not start: ${why}${detail === "" ? "" : `: ${detail}`}`,
          remediation: optOut
        })
      ))
    }
    child.on("error", (error) => fail(error.message))
    child.on("exit", (code) => fail(`exit ${code}`))
    child.stdout?.on("data", (chunk: Buffer) => {
      if (settled || !chunk.toString("utf8").includes("ready")) return
      settled = true
      child.stdout?.destroy()
      child.removeAllListeners("exit")
      child.unref()
      resume(Effect.succeed(child.pid!))
    })
    return Effect.sync(() => {
      if (!settled) child.kill("SIGKILL")
    })
  })

const readRecords = (path: string) =>
  Effect.try({
    try: () => (NodeFs.existsSync(path) ? NodeFs.readFileSync(path, "utf8") : ""),
    catch: (cause) => new Permanent({ message: `cannot read ${path}: ${String(cause)}` })
  }).pipe(
    Effect.map((text) =>
      text.split("\n").flatMap((line) => {
        if (line.trim() === "") return []
        try {
          const decoded = Schema.decodeUnknownOption(EgressRecord)(JSON.parse(line))
          return decoded._tag === "Some" ? [decoded.value] : []
        } catch {
          // A torn last line (the mediator is writing it): read next time.
          return []
        }
      })
    )
  )

export const layer = Layer.effect(
  Egress,
  Effect.gen(function*() {
    const home = yield* Home
    const logPath = (workspace: string) => NodePath.join(home.workspaceDir(workspace), "egress.jsonl")

    const release = (workspace: string) =>
      stopMediator(home.runtimeDir(workspace), egressNamespace(home.root, workspace)).pipe(
        Effect.zipRight(stopInterceptor(home.runtimeDir(workspace))),
        Effect.zipRight(
          // `ip netns add` makes this file first, `ip netns delete` removes it last.
          NodeFs.existsSync(`/run/netns/${egressNamespace(home.root, workspace)}`)
            ? ip(["netns", "delete", egressNamespace(home.root, workspace)]).pipe(Effect.ignore)
            : Effect.void
        )
      )

    // A start's setting up and the runtime's reaping of one workspace never interleave: a reap that
    // judged a namespace a leftover must not delete the one a start has just made under that name.
    const locks = new Map<string, Effect.Semaphore>()
    const exclusive = (workspace: string) => {
      let lock = locks.get(workspace)
      if (lock === undefined) {
        lock = Effect.unsafeMakeSemaphore(1)
        locks.set(workspace, lock)
      }
      return lock.withPermits(1)
    }

    const prepareUnlocked = Effect.fn("Egress.prepare")(
      function*(workspace: Workspace, values: EgressValues) {
        const policy = workspace.egress ?? defaultEgress
        if (workspace.network !== "user" || policy.mode === "off") return undefined
        const problem = egressProblem()
        if (problem !== undefined) {
          return yield* new Unsupported({ ...problem, backend: "qemu", feature: "egress mediation" })
        }
        if (workspace.ports.some((p) => p.protocol !== "tcp")) {
          return yield* new Unsupported({
            message: "only TCP ports can be published under egress mediation",
            remediation: optOut,
            feature: "egress mediation"
          })
        }
        const ns = egressNamespace(home.root, workspace.name)
        const tap = egressTap(home.root, workspace.name)
        const addresses = mediatedAddresses(workspace)
        const runtimeDir = yield* home.ensureDir(home.runtimeDir(workspace.name))
        yield* home.ensureDir(home.workspaceDir(workspace.name))
        // Whatever an earlier session left goes first.
        yield* release(workspace.name)
        const setUp = Effect.gen(function*() {
          // A handful of processes, not one per address, link and rule: this is on every start's path.
          yield* ip(["netns", "add", ns])
          yield* ip(
            ["-n", ns, "-batch", "-"],
            [
              `tuntap add dev ${tap} mode tap`,
              // The same gateway MAC in every namespace: a guest resumed from a memory capture (a fork, a
              // restore, a warm start) keeps its ARP entry for the gateway, which must still answer.
              `link set dev ${tap} address ${gatewayMac}`,
              ...[...new Set([addresses.gateway, addresses.resolver])].map((address) =>
                `addr add ${address}/${addresses.prefix} dev ${tap}`
              ),
              "link set lo up",
              `link set ${tap} up`,
              `rule add fwmark ${tproxyMark} lookup ${tproxyTable}`,
              `route add local 0.0.0.0/0 dev lo table ${tproxyTable}`,
              ""
            ].join("\n")
          )
          yield* inNamespace(ns, iptablesRestoreBinary(), ["-w"], namespaceRuleset(tap, addresses.resolver))
          const v6 = ip6tablesRestoreBinary()
          if (v6 !== undefined) yield* inNamespace(ns, v6, ["-w"], namespaceRuleset6).pipe(Effect.ignore)
          const upstream = process.env.MICROAGENT_EGRESS_DNS_UPSTREAM
          const args = [
            "--netns",
            `/run/netns/${ns}`,
            "--workspace",
            workspace.name,
            "--gateway",
            addresses.resolver,
            "--guest",
            addresses.guest,
            "--log",
            logPath(workspace.name),
            "--tcp-port",
            String(tcpPort),
            "--udp-port",
            String(udpPort),
            "--vmm-pidfile",
            NodePath.join(runtimeDir, "qemu.pid"),
            ...(upstream !== undefined && upstream !== "" ? ["--dns-upstream", upstream] : []),
            ...(policy.lockAllowlist ? ["--lock-allowlist"] : []),
            ...policy.allow.flatMap((entry) => ["--allow", entry]),
            // Allowed either way; under mitm also never intercepted.
            ...policy.passthrough.flatMap((
              entry
            ) => [policy.mode === "mitm" ? "--passthrough" : "--allow", entry]),
            ...(caPem === undefined ? [] : ["--mitm-socket", mitmSocket(runtimeDir)]),
            ...(policy.maxConns === undefined ? [] : ["--max-conns", String(policy.maxConns)]),
            ...(policy.maxTotalBytes === undefined
              ? []
              : ["--max-total-bytes", String(policy.maxTotalBytes)]),
            ...(policy.maxBps === undefined ? [] : ["--max-bps", String(policy.maxBps)]),
            ...workspace.ports.flatMap((p) => ["--publish", `${p.hostIp}:${p.hostPort}:${p.guestPort}`])
          ]
          const pid = yield* startMediator(mediatorBinary()!, args, runtimeDir)
          NodeFs.writeFileSync(mediatorPidFile(runtimeDir), `${pid}\n`, { mode: 0o600 })
        })
        // A stale pid file would end the new mediator (and interceptor) at once: the VMM writes its own.
        NodeFs.rmSync(NodePath.join(runtimeDir, "qemu.pid"), { force: true })
        // Under mitm the interceptor listens before the mediator can hand it a flow.
        const caPem = policy.mode === "mitm"
          ? yield* startInterceptor(workspace, runtimeDir, logPath(workspace.name), values).pipe(
            Effect.tapError(() => release(workspace.name))
          )
          : undefined
        yield* setUp.pipe(Effect.tapError(() => release(workspace.name)))
        return { netns: ns, tap, ...(caPem === undefined ? {} : { caPem }) } satisfies EgressAttachment
      }
    )
    const prepare = (workspace: Workspace, values: EgressValues = []) =>
      exclusive(workspace.name)(prepareUnlocked(workspace, values))

    const reap = (wanted: (workspace: string) => Effect.Effect<boolean>) =>
      ip(["netns", "list"]).pipe(
        Effect.map((out) =>
          out.split("\n").map((line) => line.trim().split(/\s+/)[0] ?? "").filter((n) =>
            n.startsWith(egressNamespacePrefix(home.root))
          ).map((n) => n.slice(egressNamespacePrefix(home.root).length))
        ),
        Effect.orElseSucceed(() => [] as Array<string>),
        Effect.flatMap((present) =>
          Effect.forEach(present, (ws) =>
            // Asked again under the lock: a start admitted since the listing keeps its namespace.
            exclusive(ws)(
              Effect.flatMap(wanted(ws), (keep) =>
                keep ? Effect.succeed([]) : release(ws).pipe(Effect.as([ws])))
            ))
        ),
        Effect.map((reaped) =>
          reaped.flat()
        )
      )

    return Egress.of({
      problem: Effect.sync(egressProblem),
      prepare,
      release,
      reap,
      logPath,
      // The mediator's records and the credential broker's (broker-access.jsonl), oldest first.
      read: (workspace) =>
        Effect.zipWith(
          readRecords(logPath(workspace)),
          readRecords(NodePath.join(home.workspaceDir(workspace), "broker-access.jsonl")),
          (mediator, broker) =>
            broker.length === 0 ? mediator : [...mediator, ...broker].sort((a, b) => a.ts.localeCompare(b.ts))
        )
    })
  })
)

/**
 * What a guest resumed from a memory snapshot needs before it counts as running: its clock stood still
 * while the snapshot lay on disk (it is stepped to the host's), its kernel RNG holds the state every
 * restore of that snapshot shares (host random bytes are credited and the crng reseeded at once), and
 * a copy answers to its own name and machine-id. The agent does all of it in one FRESHEN request, no
 * process spawned; an agent captured before FRESHEN existed gets the same through commands of the
 * guest's own userland (`date -s @EPOCH`, a write to /dev/urandom, a shell script), as before.
 * A clock that could not be set is recorded, not fatal; an identity that could not be set is fatal.
 */
import { Effect, Stream } from "effect"
import { randomBytes } from "node:crypto"
import { constants as osConstants } from "node:os"
import { defaultAddressing, guestResolvers, routeSpec, userNicMac } from "../../domain/Addressing.ts"
import { Permanent } from "../../domain/Errors.ts"
import { ExecRequest } from "../../domain/Exec.ts"
import type { Workspace } from "../../domain/Workspace.ts"
import {
  type FreshenRequest,
  type FreshenResult,
  type FreshenStep,
  GuestChannel,
  type GuestConnection,
  type GuestError,
  GuestRemoteError
} from "../../services/GuestChannel.ts"
import type { VmHandle } from "../../services/Hypervisor.ts"

export interface Freshened {
  /** The guest's clock was set to the host's. */
  readonly clock: boolean
  /** Host random bytes went into the guest's RNG (through FRESHEN: credited, and the crng reseeded). */
  readonly rng: boolean
  /** What failed, for the event log. */
  readonly problems: ReadonlyArray<string>
}

interface Identity {
  readonly hostname: string
  /** eth0's MAC, address and gateway on the user network (a copy resumes with its source's). */
  readonly network?: GuestNetwork | undefined
  /**
   * The workspace's extra disks (`vdb:/mnt:rw,…`), mounted by the agent once it has probed them again: a
   * guest restored from a warm-start template booted with empty stand-ins in their places.
   */
  readonly disks?: string | undefined
  /** Its NICs on named networks in place of a template's stand-ins (`OLDMAC@NEWMAC@A.B.C.D/N,…`). */
  readonly nets?: string | undefined
  /** The model and broker channels' forwarders to start (a template's guest booted without them). */
  readonly forwarders?: FreshenRequest["forwarders"] | undefined
}

/** eth0's identity; with addressing of its own, also its other routes and resolvers, as a boot sets them. */
type GuestNetwork = NonNullable<FreshenRequest["network"]>

/**
 * What a workspace's guest answers to on the user network (`mediated`: through the egress mediator);
 * undefined when it has no user NIC.
 */
export const guestNetworkOf = (workspace: Workspace, mediated: boolean): GuestNetwork | undefined => {
  if (workspace.network !== "user") return undefined
  const a = workspace.addressing
  return {
    address: a?.ip ?? defaultAddressing.ip,
    gateway: a?.gateway ?? defaultAddressing.gateway,
    mac: userNicMac(workspace.name),
    ...(a === undefined ? {} : { routes: a.routes.map(routeSpec), dns: guestResolvers(a, mediated) })
  }
}

/** Enough for the crng's 256-bit key several times over; FRESHEN takes up to 4096. */
const entropyBytes = 512

const errnoNames = new Map<number, string>(
  Object.entries(osConstants.errno).map(([name, n]) => [n, name])
)
const describeStep = (name: string, step: FreshenStep) =>
  `${name}: ${step.outcome}${
    step.errno === undefined ? "" : ` (${errnoNames.get(step.errno) ?? `errno ${step.errno}`})`
  }`

/** The host's wall clock, taken as late as possible. */
const hostTime = () => {
  const ms = Date.now()
  return { seconds: Math.floor(ms / 1000), nanoseconds: (ms % 1000) * 1_000_000 }
}

const viaAgent = (
  freshen: NonNullable<GuestConnection["freshen"]>,
  identity: Identity | undefined
) =>
  Effect.suspend(() =>
    freshen({
      time: hostTime(),
      entropy: new Uint8Array(randomBytes(entropyBytes)),
      ...(identity === undefined ? {} : { hostname: identity.hostname, newMachineId: true }),
      ...(identity?.network === undefined ? {} : { network: identity.network }),
      ...(identity?.disks === undefined ? {} : { disks: identity.disks }),
      ...(identity?.nets === undefined ? {} : { nets: identity.nets }),
      ...(identity?.forwarders === undefined ? {} : { forwarders: identity.forwarders })
    })
  ).pipe(Effect.flatMap((result: FreshenResult) => {
    const problems: Array<string> = []
    const done = (name: string, step: FreshenStep | undefined) => {
      if (step === undefined) return false
      if (step.outcome !== "done") problems.push(describeStep(name, step))
      return step.outcome === "done"
    }
    const clock = done("clock", result.clock)
    const rng = done("rng", result.rng)
    if (identity !== undefined) {
      // Unlike the clock, a copy that answers to another workspace's name (or id) must not count as running.
      const steps = [
        ["hostname", result.hostname],
        ["machine-id", result.machineId],
        ...(identity.network === undefined ? [] : [["network", result.network] as const]),
        ...(identity.nets === undefined ? [] : [["nets", result.nets] as const]),
        ...(identity.forwarders === undefined ? [] : [["forwarders", result.forwarders] as const]),
        ...(identity.disks === undefined ? [] : [["disks", result.disks] as const])
      ] as const
      for (const [name, step] of steps) {
        if (step === undefined || step.outcome === "failed") {
          const what = name === "hostname"
            ? `the hostname ${identity.hostname}`
            : name === "network"
            ? `the address ${identity.network?.address} and MAC ${identity.network?.mac}`
            : name === "disks"
            ? `the disks ${identity.disks}`
            : name === "nets"
            ? `the named-network NICs ${identity.nets}`
            : name === "forwarders"
            ? "the model and broker channels' forwarders"
            : "a new machine-id"
          return Effect.fail(
            new GuestRemoteError({
              message: `setting ${what} failed: ${
                step === undefined ? "the agent did not report it" : describeStep(name, step)
              }`
            })
          )
        }
        // `absent` (no /etc/machine-id in the image) is nothing to change.
        if (step.outcome === "skipped") problems.push(describeStep(name, step))
      }
    }
    return Effect.succeed<Freshened>({ clock, rng, problems })
  }))

const quietExec = (argv: readonly [string, ...Array<string>]) =>
  new ExecRequest({ argv: [...argv], env: {}, timeoutSeconds: 10, stdoutLimit: 4096, stderrLimit: 4096 })

/**
 * Sets the guest's hostname (and /etc/hostname, and a new /etc/machine-id where the image has them):
 * a copy resumed from another workspace's memory would otherwise answer to that one's name.
 */
const identityScript = [
  'hostname "$1"',
  'if [ -e /etc/hostname ]; then echo "$1" > /etc/hostname; fi',
  "if [ -e /etc/machine-id ]; then tr -d - < /proc/sys/kernel/random/uuid > /etc/machine-id; fi"
].join(" && ")

/** The way of an agent that does not know FRESHEN: three commands of the guest's own userland. */
const viaCommands = (
  connection: GuestConnection,
  identity: Identity | undefined
): Effect.Effect<Freshened, GuestError> =>
  Effect.gen(function*() {
    const problems: Array<string> = []
    // The epoch is taken as late as possible; the agent runs the command within milliseconds.
    const clock = yield* Effect.suspend(() =>
      connection.exec(quietExec(["date", "-u", "-s", `@${Math.round(Date.now() / 1000)}`]))
    ).pipe(
      Effect.map((result) => {
        if (result.status === "exited" && result.exitCode === 0) return true
        problems.push(`clock: date exited ${result.exitCode}: ${result.stderr.trim() || result.status}`)
        return false
      })
    )
    // Written, not credited (no RNDADDENTROPY from a shell): mixed into the pool, which makes each
    // restore's random numbers its own once the crng next reseeds.
    const rng = yield* connection.exec(
      quietExec(["sh", "-c", "cat > /dev/urandom"]),
      Stream.make(new Uint8Array(randomBytes(entropyBytes)))
    ).pipe(
      Effect.map((result) => {
        if (result.status === "exited" && result.exitCode === 0) return true
        problems.push(`rng: exited ${result.exitCode}: ${result.stderr.trim() || result.status}`)
        return false
      })
    )
    if (identity?.network !== undefined) {
      problems.push("network: the guest's agent predates FRESHEN and keeps its source's address and MAC")
    }
    if (identity?.disks !== undefined || identity?.nets !== undefined || identity?.forwarders !== undefined) {
      return yield* new GuestRemoteError({
        message:
          "the guest's agent predates FRESHEN and cannot mount disks, configure named-network NICs or serve channels"
      })
    }
    if (identity !== undefined) {
      // After the RNG, so the new machine-id comes from this guest's own randomness.
      const renamed = yield* connection.exec(quietExec(["sh", "-c", identityScript, "sh", identity.hostname]))
      if (renamed.status !== "exited" || renamed.exitCode !== 0) {
        return yield* new GuestRemoteError({
          message:
            `setting the hostname ${identity.hostname} failed (exit ${renamed.exitCode}): ${renamed.stderr.trim()}`
        })
      }
    }
    return { clock, rng, problems } satisfies Freshened
  })

export const freshenGuest = (
  workspace: string,
  handle: VmHandle,
  identity?: Identity
): Effect.Effect<Freshened, Permanent, GuestChannel> =>
  // The fake backend runs "guest" commands on the host: there is no guest clock or RNG to set.
  handle.channel._tag === "HostDirectory"
    ? Effect.succeed<Freshened>({ clock: false, rng: false, problems: ["no guest (fake backend)"] })
    : Effect.scoped(Effect.gen(function*() {
      const channel = yield* GuestChannel
      const connection = yield* channel.connect(handle.channel, { timeout: "30 seconds" })
      const freshen = connection.freshen
      if (freshen === undefined) return yield* viaCommands(connection, identity)
      // A guest captured with an older agent still runs that agent: it does not know FRESHEN.
      return yield* viaAgent(freshen, identity).pipe(
        Effect.catchTag("GuestUnsupported", () => viaCommands(connection, identity))
      )
    })).pipe(
      Effect.mapError((error) =>
        new Permanent({
          message:
            `workspace ${workspace}: the restored guest's agent did not take its clock and RNG: ${error.message}`,
          remediation: "the VM was stopped; `microagent logs` shows its console"
        })
      )
    )

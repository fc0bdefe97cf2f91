/**
 * What a guest resumed from a memory snapshot needs before it counts as running: its clock stood still
 * while the snapshot lay on disk (it is stepped to the host's), and its kernel RNG holds the state
 * every restore of that snapshot shares (host random bytes are mixed in). Both go through the agent
 * as commands of the guest's own userland (`date -s @EPOCH`, a write to /dev/urandom); an image without
 * `date` keeps its stale clock, which is recorded, not fatal.
 */
import { Effect, Stream } from "effect"
import { randomBytes } from "node:crypto"
import { Permanent } from "../../domain/Errors.ts"
import { ExecRequest } from "../../domain/Exec.ts"
import { GuestChannel, GuestRemoteError } from "../../services/GuestChannel.ts"
import type { VmHandle } from "../../services/Hypervisor.ts"

export interface Freshened {
  /** The guest's clock was set to the host's. */
  readonly clock: boolean
  /** Host random bytes went into the guest's RNG. */
  readonly rng: boolean
  /** What failed, for the event log. */
  readonly problems: ReadonlyArray<string>
}

const entropyBytes = 512

/**
 * Sets the guest's hostname (and /etc/hostname, and a new /etc/machine-id where the image has them):
 * a copy resumed from another workspace's memory would otherwise answer to that one's name.
 */
const identityScript = [
  'hostname "$1"',
  'if [ -e /etc/hostname ]; then echo "$1" > /etc/hostname; fi',
  "if [ -e /etc/machine-id ]; then tr -d - < /proc/sys/kernel/random/uuid > /etc/machine-id; fi"
].join(" && ")

export const freshenGuest = (
  workspace: string,
  handle: VmHandle,
  identity?: { readonly hostname: string }
): Effect.Effect<Freshened, Permanent, GuestChannel> =>
  // The fake backend runs "guest" commands on the host: there is no guest clock or RNG to set.
  handle.channel._tag === "HostDirectory"
    ? Effect.succeed<Freshened>({ clock: false, rng: false, problems: ["no guest (fake backend)"] })
    : Effect.scoped(Effect.gen(function*() {
      const channel = yield* GuestChannel
      const connection = yield* channel.connect(handle.channel, { timeout: "30 seconds" })
      const problems: Array<string> = []
      // The epoch is taken as late as possible; the agent runs the command within milliseconds.
      const clock = yield* Effect.suspend(() =>
        connection.exec(
          new ExecRequest({
            argv: ["date", "-u", "-s", `@${Math.round(Date.now() / 1000)}`],
            env: {},
            timeoutSeconds: 10,
            stdoutLimit: 4096,
            stderrLimit: 4096
          })
        )
      ).pipe(
        Effect.map((result) => {
          if (result.status === "exited" && result.exitCode === 0) return true
          problems.push(`clock: date exited ${result.exitCode}: ${result.stderr.trim() || result.status}`)
          return false
        })
      )
      // Written, not credited: without RNDADDENTROPY this mixes the bytes into the pool, which is what
      // makes each restore's random numbers its own.
      const rng = yield* connection.exec(
        new ExecRequest({
          argv: ["sh", "-c", "cat > /dev/urandom"],
          env: {},
          timeoutSeconds: 10,
          stdoutLimit: 4096,
          stderrLimit: 4096
        }),
        Stream.make(new Uint8Array(randomBytes(entropyBytes)))
      ).pipe(
        Effect.map((result) => {
          if (result.status === "exited" && result.exitCode === 0) return true
          problems.push(`rng: exited ${result.exitCode}: ${result.stderr.trim() || result.status}`)
          return false
        })
      )
      if (identity !== undefined) {
        // After the reseed, so the new machine-id comes from this guest's own randomness.
        const renamed = yield* connection.exec(
          new ExecRequest({
            argv: ["sh", "-c", identityScript, "sh", identity.hostname],
            env: {},
            timeoutSeconds: 10,
            stdoutLimit: 4096,
            stderrLimit: 4096
          })
        )
        // Unlike the clock, a copy that answers to another workspace's name must not count as running.
        if (renamed.status !== "exited" || renamed.exitCode !== 0) {
          return yield* new GuestRemoteError({
            message:
              `setting the hostname ${identity.hostname} failed (exit ${renamed.exitCode}): ${renamed.stderr.trim()}`
          })
        }
      }
      return { clock, rng, problems } satisfies Freshened
    })).pipe(
      Effect.mapError((error) =>
        new Permanent({
          message:
            `workspace ${workspace}: the restored guest's agent did not take its clock and RNG: ${error.message}`,
          remediation: "the VM was stopped; `microagent logs` shows its console"
        })
      )
    )

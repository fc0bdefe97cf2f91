/**
 * The host side of the guest channel: one multiplexed connection per VM carrying execs, stdin,
 * output, files, secrets and shutdown.
 */
import { Context, type Duration, type Effect, Schema, type Scope, type Stream } from "effect"
import type { ExecOutput, ExecRequest, ExecResult } from "../domain/Exec.ts"
import type { ChannelEndpoint } from "./Hypervisor.ts"

/** The agent could not be reached (not booted yet, VM gone, socket refused). Retryable. */
export class GuestUnreachable extends Schema.TaggedError<GuestUnreachable>()("GuestUnreachable", {
  message: Schema.String
}) {}

/** The peer broke the protocol (bad frame, unexpected message, version mismatch). */
export class GuestProtocolError extends Schema.TaggedError<GuestProtocolError>()("GuestProtocolError", {
  message: Schema.String
}) {}

/** The agent understood the request and reported a failure (no such file, permission denied, …). */
export class GuestRemoteError extends Schema.TaggedError<GuestRemoteError>()("GuestRemoteError", {
  message: Schema.String,
  code: Schema.optional(Schema.String)
}) {}

export type GuestError = GuestUnreachable | GuestProtocolError | GuestRemoteError

/**
 * The agent does not know the operation: it is older than the operation (a guest resumed from a
 * memory snapshot keeps running the agent it was captured with). The caller can fall back.
 */
export class GuestUnsupported extends Schema.TaggedError<GuestUnsupported>()("GuestUnsupported", {
  message: Schema.String,
  operation: Schema.String
}) {}

/** What makes a guest resumed from a memory snapshot its own; every part is optional. */
export interface FreshenRequest {
  /** The host's wall clock, for the guest's CLOCK_REALTIME. */
  readonly time?: { readonly seconds: number; readonly nanoseconds: number }
  /** 1 to 4096 bytes from the host's CSPRNG, credited to the guest's RNG, which is reseeded at once. */
  readonly entropy?: Uint8Array
  /** The guest's new hostname (1 to 64 of `A-Z a-z 0-9 - .`), and /etc/hostname where the image has one. */
  readonly hostname?: string
  /** A new /etc/machine-id, from the guest's RNG after the reseed, where the image has one. */
  readonly newMachineId?: boolean
  /**
   * eth0's own MAC, address (`A.B.C.D/N`) and default route (a copy resumes with its source's); with
   * `routes` (`DST/N@GW`) and `dns`, its other routes and /etc/resolv.conf (a template's restore resumes
   * with the template's).
   */
  readonly network?: {
    readonly address: string
    readonly gateway: string
    readonly mac: string
    readonly routes?: ReadonlyArray<string>
    readonly dns?: ReadonlyArray<string>
  }
  /**
   * Extra disks (`vdb:/mnt:rw,…`) to probe again and mount: a guest restored from a warm-start template
   * booted with empty stand-ins where this workspace has its volumes and disks.
   */
  readonly disks?: string
  /**
   * NICs on named networks (`OLDMAC@NEWMAC@A.B.C.D/N,…`): a template's stand-in, found by its MAC, given
   * the workspace's MAC and address.
   */
  readonly nets?: string
  /** Start the forwarders of the model channel (its guest port) and of the broker endpoints (theirs). */
  readonly forwarders?: { readonly modelPort?: number; readonly brokerPorts?: ReadonlyArray<number> }
}

/**
 * How a step went: `skipped` by an agent in host test mode (it changes nothing of the host's),
 * `absent` when the image has nothing to change (no /etc/machine-id), `failed` with the guest's errno.
 */
export interface FreshenStep {
  readonly outcome: "done" | "skipped" | "failed" | "absent"
  readonly errno?: number
}

/** One entry per step that was asked for. */
export interface FreshenResult {
  readonly clock?: FreshenStep
  readonly rng?: FreshenStep
  readonly hostname?: FreshenStep
  readonly machineId?: FreshenStep
  readonly network?: FreshenStep
  readonly disks?: FreshenStep
  readonly nets?: FreshenStep
  readonly forwarders?: FreshenStep
}

export interface PutFile {
  readonly path: string
  readonly mode: number
  readonly uid?: number
  readonly gid?: number
  readonly data: Stream.Stream<Uint8Array, GuestError>
}

export interface GuestFile {
  readonly mode: number
  readonly size: number
  readonly data: Stream.Stream<Uint8Array, GuestError>
}

/** Sent to a running exec: a signal for its process group, or a new terminal size (PTY only). */
export type ExecControl =
  | { readonly _tag: "Signal"; readonly signal: number }
  | { readonly _tag: "Resize"; readonly rows: number; readonly cols: number }

/** What the agent announced in its handshake. */
export interface AgentInfo {
  readonly version: number
  readonly software: string
  readonly capabilities: ReadonlyArray<string>
  readonly maxPayload: number
}

export interface ConnectOptions {
  /** How long to keep retrying until the agent answers the handshake (default 60 s). */
  readonly timeout?: Duration.DurationInput
}

export interface GuestConnection {
  /** The agent's handshake; absent on fakes that have no agent. */
  readonly agent?: AgentInfo
  /**
   * Runs a command to completion; stdin is closed at once unless given. Output is decoded as
   * UTF-8 and capped at 10 MiB per stream unless the request sets limits (use `execStream` for
   * binary output).
   */
  readonly exec: (
    request: ExecRequest,
    stdin?: Stream.Stream<Uint8Array, GuestError>
  ) => Effect.Effect<ExecResult, GuestError>
  /**
   * Runs a command, streaming its output; interrupting the stream signals the guest process.
   * `controls` delivers signals and terminal resizes while it runs.
   */
  readonly execStream: (
    request: ExecRequest,
    stdin?: Stream.Stream<Uint8Array, GuestError>,
    controls?: Stream.Stream<ExecControl, GuestError>
  ) => Stream.Stream<ExecOutput, GuestError>
  readonly putFile: (file: PutFile) => Effect.Effect<void, GuestError>
  readonly getFile: (path: string) => Effect.Effect<GuestFile, GuestError>
  /**
   * Secrets land in a tmpfs at /run/secrets, one 0400 file each. With `purge`, every secret delivered
   * before is first overwritten with zeros in place and removed (before a memory snapshot).
   */
  readonly deliverSecrets: (
    secrets: ReadonlyArray<{ name: string; value: Uint8Array }>,
    options?: { readonly purge?: boolean | undefined }
  ) => Effect.Effect<void, GuestError>
  /**
   * Sets the guest's clock, credits host entropy to its RNG and reseeds it, and gives it a hostname
   * and machine-id, inside the agent (no process is spawned). `GuestUnsupported` when the agent is too
   * old to know FRESHEN; absent on fakes that have no agent.
   */
  readonly freshen?: (request: FreshenRequest) => Effect.Effect<FreshenResult, GuestError | GuestUnsupported>
  readonly ping: Effect.Effect<void, GuestError>
  /** Asks PID 1 to stop workloads, sync and power off. */
  readonly shutdown: Effect.Effect<void, GuestError>
  /**
   * Completes once the transport is gone (the VMM exited, the socket failed or was closed), so a
   * holder of long-lived connections can let go of those whose VM went away by other means.
   */
  readonly closed?: Effect.Effect<void>
}

export interface GuestChannelShape {
  /**
   * Connects and handshakes, retrying while the agent is unreachable (the VM may still be booting)
   * for at most `options.timeout`. The connection lives as long as the scope.
   */
  readonly connect: (
    endpoint: ChannelEndpoint,
    options?: ConnectOptions
  ) => Effect.Effect<GuestConnection, GuestError, Scope.Scope>
}

export class GuestChannel extends Context.Tag("microagent/GuestChannel")<GuestChannel, GuestChannelShape>() {}

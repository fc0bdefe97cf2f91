/**
 * The credential broker on the host side (see domain/Broker.ts): for a running workspace with
 * `--broker` endpoints, a process that serves each endpoint's guest channel and holds the brokered
 * secrets' values in its memory only. Backends without guest channels (the fake one) have none.
 */
import { Context, type Effect, type Redacted } from "effect"
import type { Permanent } from "../domain/Errors.ts"
import type { BrokerEndpoint } from "../domain/Workspace.ts"

export interface BrokerAttachment {
  readonly workspace: string
  /** The VM's runtime directory (the endpoints' sockets, the broker's pid file). */
  readonly runtimeDir: string
  /** Where `broker-access.jsonl` (and `broker-capture.jsonl`) are written. */
  readonly workspaceDir: string
  readonly endpoints: ReadonlyArray<BrokerEndpoint>
  readonly vmmPid: number
  readonly vmmStartTime?: string | undefined
  /** The values of the endpoints' secrets, by name. */
  readonly values: ReadonlyArray<{ readonly name: string; readonly value: Redacted.Redacted<Uint8Array> }>
}

export interface CredentialBrokerShape {
  /** Starts the broker of a VM that runs (ending one an earlier session left); it ends with the VM. */
  readonly attach: (attachment: BrokerAttachment) => Effect.Effect<{ readonly pid: number }, Permanent>
  /** Ends the broker of this runtime directory now; none running is fine. */
  readonly release: (runtimeDir: string) => Effect.Effect<void>
}

export class CredentialBroker extends Context.Tag("microagent/CredentialBroker")<
  CredentialBroker,
  CredentialBrokerShape
>() {}

/**
 * Egress mediation on the host side: per workspace, a network namespace holding the guest's NIC,
 * rules inside it that send every guest flow to a mediator process, and the mediator's audit log;
 * under `mitm`, a TLS interceptor beside the mediator.
 */
import { Context, type Effect, type Redacted } from "effect"
import type { EgressRecord } from "../domain/Egress.ts"
import type { Permanent, Unsupported } from "../domain/Errors.ts"
import type { Workspace } from "../domain/Workspace.ts"

/** What the VMM needs to put the guest's NIC behind the mediator. */
export interface EgressAttachment {
  /** The namespace the VMM runs its tap in (`ip netns` name). */
  readonly netns: string
  /** The tap, already created in that namespace. */
  readonly tap: string
  /** `mitm`: the certificate (PEM) of the CA the interceptor minted, for the guest's trust stores. */
  readonly caPem?: string
}

/** Values of host-held secrets by name (`mitm`'s credential swaps read theirs). */
export type EgressValues = ReadonlyArray<
  { readonly name: string; readonly value: Redacted.Redacted<Uint8Array> }
>

export interface EgressShape {
  /** Why mediation cannot run on this host, or undefined when it can (checked before anything changes). */
  readonly problem: Effect.Effect<{ readonly message: string; readonly remediation: string } | undefined>
  /**
   * Makes the namespace, tap, rules and mediator of a workspace ready (replacing leftovers of an
   * earlier session); undefined when the workspace is not mediated (`--egress off`, no user network).
   */
  readonly prepare: (
    workspace: Workspace,
    values?: EgressValues
  ) => Effect.Effect<EgressAttachment | undefined, Unsupported | Permanent>
  /** Ends the mediator and removes the namespace; nothing there is fine. */
  readonly release: (workspace: string) => Effect.Effect<void>
  /**
   * Ends the mediators and namespaces of this state directory whose workspace is no longer `wanted`,
   * asked of each one while no start of that workspace can be setting up its own.
   */
  readonly reap: (
    wanted: (workspace: string) => Effect.Effect<boolean>
  ) => Effect.Effect<ReadonlyArray<string>>
  /** The workspace's audit log path. */
  readonly logPath: (workspace: string) => string
  /** The audit log's records, oldest first (an empty list when there is no log yet). */
  readonly read: (workspace: string) => Effect.Effect<ReadonlyArray<EgressRecord>, Permanent>
}

export class Egress extends Context.Tag("microagent/Egress")<Egress, EgressShape>() {}

/**
 * The host side of named networks: what a member's VMM is plugged into. On a real backend, one network
 * namespace per network holding a bridge, and a tap per member moved into it; on the fake backend, a
 * simulation with nothing to plumb. Records and addresses are `Networks`'s; /etc/hosts in the members
 * is written by the programs through the guest channel, the same on every backend.
 */
import { Context, type Effect } from "effect"
import type { Permanent, Unsupported } from "../domain/Errors.ts"
import type { NicAttachment } from "./Hypervisor.ts"

/** A member's address on a network, as `Networks.join` allocated it. */
export interface MemberAddress {
  readonly network: string
  readonly workspace: string
  readonly ip: string
  readonly gateway: string
  readonly prefix: number
}

export interface NetworkFabricShape {
  /** Why this host cannot plumb named networks, or undefined when it can. */
  readonly problem: Effect.Effect<{ readonly message: string; readonly remediation: string } | undefined>
  /** `problem` as an `Unsupported` failure, checked before anything changes. */
  readonly require: Effect.Effect<void, Unsupported>
  /** Makes the member's network ready (created if missing) and returns the NIC its VMM is given. */
  readonly prepare: (member: MemberAddress) => Effect.Effect<NicAttachment, Permanent>
  /** After the VMM started: plugs the member's NIC into its network. */
  readonly attach: (workspace: string, nic: NicAttachment) => Effect.Effect<void, Permanent>
  /**
   * Removes what this state directory's networks hold on the host for every network not in `needed`
   * (asked after the listing, so a network a start is making now is kept); returns what went.
   */
  readonly reap: <E>(
    needed: Effect.Effect<ReadonlySet<string>, E>
  ) => Effect.Effect<ReadonlyArray<string>, E | Permanent>
}

export class NetworkFabric
  extends Context.Tag("microagent/NetworkFabric")<NetworkFabric, NetworkFabricShape>()
{}

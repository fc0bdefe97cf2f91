/**
 * Named networks: a bridge with stable per-member IPv4 addresses, members reachable by name.
 */
import { Context, type Effect, Schema } from "effect"
import type { Conflict, InvalidInput, NotFound, Permanent, ResourceExhausted } from "../domain/Errors.ts"

export class Network extends Schema.Class<Network>("Network")({
  name: Schema.String,
  subnet: Schema.String,
  gateway: Schema.String,
  members: Schema.Array(Schema.Struct({ workspace: Schema.String, ip: Schema.String })),
  createdAt: Schema.DateTimeUtc
}) {}

export interface NetworksShape {
  readonly create: (
    name: string,
    subnet?: string
  ) => Effect.Effect<Network, Permanent | Conflict | NotFound | ResourceExhausted | InvalidInput>
  readonly list: Effect.Effect<ReadonlyArray<Network>, Permanent>
  readonly inspect: (name: string) => Effect.Effect<Network, Permanent | NotFound>
  readonly remove: (name: string) => Effect.Effect<void, Permanent | Conflict | NotFound>
  /** Allocates (or returns the persisted) address of a workspace on a network. */
  readonly join: (
    name: string,
    workspace: string
  ) => Effect.Effect<
    { ip: string; gateway: string; prefix: number },
    Permanent | NotFound | ResourceExhausted
  >
  readonly leave: (name: string, workspace: string) => Effect.Effect<void, Permanent>
}

export class Networks extends Context.Tag("microagent/Networks")<Networks, NetworksShape>() {}

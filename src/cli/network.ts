/**
 * `microagent network create|ls|inspect|rm` (`list` for ls), and the `--network`/`--publish` flags of
 * `run` and `create`. The verbs touch only the store (no VM), so they run in the CLI process.
 */
import { Args, Command, Options } from "@effect/cli"
import { Effect, Layer } from "effect"
import { defaultHostIp, parsePublishes } from "../domain/Publish.ts"
import type { Spec } from "../domain/Spec.ts"
import * as NetworkFabricLive from "../layers/network/NetworkFabricLive.ts"
import * as NetworksLive from "../layers/network/NetworksLive.ts"
import {
  networkCreate,
  networkInspect,
  networkList,
  networkRemove,
  resolveNetworkFlags
} from "../programs/Network.ts"
import type { Network } from "../services/Networks.ts"
import { withStore } from "./Layers.ts"
import { emit, emitList, quietOption, table } from "./Output.ts"

/** `--network` and `-p` over the spec's `network.mode` and `network.forwards`. */
export const networkFields = (
  options: { readonly network: ReadonlyArray<string>; readonly publish: ReadonlyArray<string> },
  spec: Spec
) =>
  Effect.gen(function*() {
    const resolved = yield* resolveNetworkFlags(options.network)
    const forwards = (spec.network?.forwards ?? []).map((f) =>
      `${f.host ?? defaultHostIp}:${f.hostPort}:${f.guestPort}/${f.protocol ?? "tcp"}`
    )
    const ports = yield* parsePublishes(options.publish.length > 0 ? options.publish : forwards)
    const { dns, gateway, ip, routes, subnet } = spec.network ?? {}
    const addressing = { ip, subnet, gateway, dns, routes }
    return {
      network: resolved.network ?? spec.network?.mode,
      ...(resolved.networks.length > 0 ? { networks: resolved.networks } : {}),
      ...(ports.length > 0 ? { ports } : {}),
      ...(Object.values(addressing).some((v) => v !== undefined) ? { addressing } : {})
    }
  })

const withNetworks = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  withStore(Effect.provide(effect, Layer.fresh(Layer.merge(NetworksLive.layer, NetworkFabricLive.layer))))

const describe = (n: Network) =>
  `${n.name}  subnet=${n.subnet}  gateway=${n.gateway}  members=${n.members.length}`

const create = Command.make(
  "create",
  {
    subnet: Options.text("subnet").pipe(
      Options.withDescription("IPv4 subnet, /16 to /29 (default: the next free /24 of 10.89.0.0/16)"),
      Options.optional
    ),
    name: Args.text({ name: "name" })
  },
  ({ name, subnet }) =>
    withNetworks(networkCreate(name, subnet._tag === "Some" ? subnet.value : undefined)).pipe(
      Effect.flatMap((network) => emit(network, describe))
    )
).pipe(Command.withDescription("create a named network (a bridge its members share)"))

const listHandler = ({ quiet }: { readonly quiet: boolean }) =>
  withNetworks(networkList()).pipe(
    Effect.flatMap((networks) =>
      emitList(quiet, networks.map((n) => n.name), { networks }, (r) =>
        table(
          ["NAME", "SUBNET", "GATEWAY", "MEMBERS"],
          r.networks.map((n) => [n.name, n.subnet, n.gateway, n.members.map((m) => m.workspace).join(",")])
        ))
    )
  )
const ls = Command.make("ls", { quiet: quietOption }, listHandler).pipe(
  Command.withDescription("list named networks")
)
const list = Command.make("list", { quiet: quietOption }, listHandler).pipe(
  Command.withDescription("list named networks (alias of ls)")
)

const inspect = Command.make(
  "inspect",
  { name: Args.text({ name: "name" }) },
  ({ name }) =>
    withNetworks(networkInspect(name)).pipe(
      Effect.flatMap((report) =>
        emit(report, (r) =>
          [
            describe(r.network),
            ...(r.members.length === 0
              ? []
              : ["", table(["WORKSPACE", "IP", "STATE"], r.members.map((m) => [m.workspace, m.ip, m.state]))])
          ].join("\n"))
      )
    )
).pipe(Command.withDescription("show a network, its members and their addresses"))

const rm = Command.make("rm", {
  force: Options.boolean("force").pipe(
    Options.withDescription("detach stopped members first (running members must be halted)")
  ),
  name: Args.text({ name: "name" })
}, ({ force, name }) =>
  withNetworks(networkRemove(name, { force })).pipe(
    Effect.flatMap((result) => emit(result, (r) => `removed network ${r.network}`))
  )).pipe(Command.withDescription("remove a named network (refused while it has members, unless --force)"))

export const networkCommand = Command.make("network").pipe(
  Command.withDescription("create, list, inspect and remove named networks"),
  Command.withSubcommands([create, ls, list, inspect, rm])
)

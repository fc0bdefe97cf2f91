/**
 * `NetworkFabric` of the fake backend: named networks simulated on the host. Nothing is plumbed (no
 * namespace, bridge or tap): membership and addresses are recorded by `Networks` as on a real backend,
 * each member is given the NIC (tap name, MAC, address) it would have, and the members' /etc/hosts are
 * written through the fake guest channel into their scratch roots. Fake guests run commands on the host,
 * so there is no traffic between members to carry.
 */
import { Effect, Layer } from "effect"
import { Home } from "../../../services/Home.ts"
import { NicAttachment } from "../../../services/Hypervisor.ts"
import { NetworkFabric } from "../../../services/NetworkFabric.ts"
import { macAddress, tapName } from "../../network/Addressing.ts"

export const layer = Layer.effect(
  NetworkFabric,
  Effect.map(Home, (home) =>
    NetworkFabric.of({
      problem: Effect.succeed(undefined),
      require: Effect.void,
      prepare: (member) =>
        Effect.succeed(
          new NicAttachment({
            network: member.network,
            tap: tapName(home.root, member.network, member.workspace),
            mac: macAddress(home.root, member.network, member.workspace),
            address: `${member.ip}/${member.prefix}`
          })
        ),
      attach: () => Effect.void,
      reap: () => Effect.succeed([])
    }))
)

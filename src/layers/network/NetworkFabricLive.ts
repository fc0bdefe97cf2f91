/**
 * `NetworkFabric` with iproute2 (Fabric.ts): a namespace and bridge per named network of the state
 * directory, members' taps (made by QEMU, in its egress namespace when mediated) moved into it.
 */
import { Effect, Layer } from "effect"
import * as NodeFs from "node:fs"
import { Home } from "../../services/Home.ts"
import { NicAttachment } from "../../services/Hypervisor.ts"
import { NetworkFabric } from "../../services/NetworkFabric.ts"
import { macAddress, namespacePrefix, tapName } from "./Addressing.ts"
import { egressNamespace } from "./EgressLive.ts"
import {
  attachTap,
  ensureBridge,
  fabricProblem,
  namespaces,
  removeNamespace,
  requireFabric
} from "./Fabric.ts"

export const layer = Layer.effect(
  NetworkFabric,
  Effect.map(Home, (home) =>
    NetworkFabric.of({
      problem: Effect.sync(fabricProblem),
      require: requireFabric,
      prepare: (member) =>
        Effect.as(
          ensureBridge(home.root, member.network, member.gateway, member.prefix),
          new NicAttachment({
            network: member.network,
            tap: tapName(home.root, member.network, member.workspace),
            mac: macAddress(home.root, member.network, member.workspace),
            address: `${member.ip}/${member.prefix}`
          })
        ),
      attach: (workspace, nic) => {
        // QEMU made the tap in the workspace's egress namespace when its egress is mediated.
        const egressNs = egressNamespace(home.root, workspace)
        const from = NodeFs.existsSync(`/run/netns/${egressNs}`) ? egressNs : undefined
        return attachTap(home.root, nic.network, nic.tap, from)
      },
      reap: (needed) =>
        Effect.gen(function*() {
          if (fabricProblem() !== undefined) return [] as ReadonlyArray<string>
          const existing = yield* namespaces(home.root)
          if (existing.length === 0) return []
          const wanted = yield* needed
          const prefix = namespacePrefix(home.root)
          const orphans = existing.filter((ns) => !wanted.has(ns.slice(prefix.length)))
          yield* Effect.forEach(orphans, removeNamespace)
          return orphans
        })
    }))
)

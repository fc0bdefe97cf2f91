/**
 * Named networks under a running workspace: plumbed at start (namespace, bridge, tap), announced in
 * every running member's /etc/hosts as members start and stop, and torn down when the last member
 * stops. The reaper removes any namespace of this state directory that no live workspace needs (after
 * a crash, at gc and delete).
 */
import { Effect, Option, Schema, Stream } from "effect"
import { NotFound } from "../../domain/Errors.ts"
import { probePorts } from "../../domain/Publish.ts"
import { isLive } from "../../domain/State.ts"
import type { Workspace } from "../../domain/Workspace.ts"
import { GuestChannel } from "../../services/GuestChannel.ts"
import { Hypervisor, type NicAttachment, VmHandle } from "../../services/Hypervisor.ts"
import { NetworkFabric } from "../../services/NetworkFabric.ts"
import { Networks } from "../../services/Networks.ts"
import { StateStore } from "../../services/StateStore.ts"

const vmHandleOf = (workspace: Workspace) => Schema.decodeUnknownOption(VmHandle)(workspace.vm)
// ---------- start and stop ----------

/** What a start checks before it changes anything: published host ports are free, named networks can be plumbed. */
export const preflightNetworking = Effect.fn("preflightNetworking")(function*(workspace: Workspace) {
  yield* probePorts(workspace.ports)
  if (workspace.networks.length > 0) yield* (yield* NetworkFabric).require
})

/** The NICs a start needs, with their namespaces and bridges made ready. */
export const prepareNetworks = Effect.fn("prepareNetworks")(function*(workspace: Workspace) {
  if (workspace.networks.length === 0) return [] as ReadonlyArray<NicAttachment>
  const fabric = yield* NetworkFabric
  yield* fabric.require
  const networks = yield* Networks
  return yield* Effect.forEach(workspace.networks, (name) =>
    Effect.gen(function*() {
      const address = yield* networks.join(name, workspace.name).pipe(
        Effect.catchTag("NotFound", () =>
          new NotFound({
            message: `workspace ${workspace.name} is on network ${name}, which no longer exists`,
            remediation: `create it again: microagent network create ${name}`
          }))
      )
      return yield* fabric.prepare({ network: name, workspace: workspace.name, ...address })
    }))
})

/** After launch: plugs the taps into their bridges and tells every member who is up. */
export const attachNetworks = Effect.fn("attachNetworks")(
  function*(workspace: Workspace, nics: ReadonlyArray<NicAttachment>, handle: VmHandle) {
    if (nics.length === 0) return
    const fabric = yield* NetworkFabric
    const store = yield* StateStore
    for (const nic of nics) {
      yield* fabric.attach(workspace.name, nic)
      yield* store.appendEvent(workspace.name, { type: "network", detail: `${nic.network} ${nic.address}` })
    }
    yield* refreshHosts(workspace.networks, { name: workspace.name, handle })
  }
)

/** After a stop: the other members forget this one; a network nobody runs on loses its namespace. */
export const detachNetworks = (workspace: Workspace) =>
  workspace.networks.length === 0
    ? Effect.void
    : Effect.gen(function*() {
      yield* refreshHosts(workspace.networks)
      yield* reapNetworks
    }).pipe(Effect.catchAllCause((cause) => Effect.logWarning("detaching networks failed", cause)))

/** At delete: the addresses go back to their networks. */
export const forgetNetworks = (workspace: Workspace) =>
  workspace.networks.length === 0
    ? Effect.void
    : Effect.gen(function*() {
      const networks = yield* Networks
      for (const name of workspace.networks) yield* networks.leave(name, workspace.name)
      // The record is gone already: a namespace that cannot be removed now is left to the next reap (gc).
      yield* reapNetworks.pipe(
        Effect.catchAllCause((cause) => Effect.logWarning("removing network namespaces failed", cause))
      )
    })

/**
 * Removes what the fabric holds for every network of this state directory that no live workspace is
 * on. The fabric lists what it holds before the records are read, so a network a start began making
 * after the listing is never taken for an orphan.
 */
export const reapNetworks = Effect.gen(function*() {
  const fabric = yield* Effect.serviceOption(NetworkFabric)
  if (Option.isNone(fabric)) return [] as ReadonlyArray<string>
  const store = yield* StateStore
  return yield* fabric.value.reap(
    Effect.map(
      store.list,
      (all) => new Set(all.filter((ws) => isLive(ws.state)).flatMap((ws) => ws.networks))
    )
  )
}).pipe(Effect.withSpan("reapNetworks"))

// ---------- /etc/hosts ----------

const hostsFile = (
  self: { readonly ip: string; readonly names: ReadonlyArray<string> } | undefined,
  peers: ReadonlyArray<{ readonly ip: string; readonly names: ReadonlyArray<string> }>
) =>
  [
    "# written by microagent: the members of this workspace's networks",
    "127.0.0.1\tlocalhost",
    "::1\tlocalhost ip6-localhost ip6-loopback",
    ...(self === undefined ? [] : [`${self.ip}\t${self.names.join(" ")}`]),
    ...peers.map((p) => `${p.ip}\t${p.names.join(" ")}`),
    ""
  ].join("\n")

/**
 * Writes /etc/hosts in every running member of `names` (and in `starting`, which is not recorded as
 * running yet): each lists itself and the live members of all its networks by name and hostname. A
 * member still starting is listed already (so two members starting at once see each other: each
 * one's own push comes after the other is recorded); `gone` is left out (a start that failed). A
 * member that cannot be reached is skipped; its file is rewritten at the next change.
 */
const refreshHosts = (
  names: ReadonlyArray<string>,
  starting?: { readonly name: string; readonly handle: VmHandle },
  gone?: string
) =>
  Effect.gen(function*() {
    const store = yield* StateStore
    const networks = yield* Networks
    const channel = yield* GuestChannel
    const all = yield* networks.list
    const records = new Map<string, Workspace>((yield* store.list).map((ws) => [ws.name, ws]))
    const stateOf = (name: string) => records.get(name)?.state
    const isListed = (name: string) =>
      name !== gone
      && (name === starting?.name || ["running", "paused", "starting"].includes(stateOf(name) ?? ""))
    const isTarget = (name: string) =>
      name !== gone && (name === starting?.name || stateOf(name) === "running")
    const namesOf = (ws: Workspace) => [...new Set([ws.name, ws.hostname])]
    const targets = new Set(
      all.filter((n) => names.includes(n.name)).flatMap((n) => n.members.map((m) => m.workspace)).filter(
        isTarget
      )
    )
    for (const target of targets) {
      const ws = records.get(target)
      if (ws === undefined) continue
      const mine = all.filter((n) => ws.networks.includes(n.name))
      const selfIp = mine.flatMap((n) => n.members).find((m) => m.workspace === target)?.ip
      const seen = new Set([target])
      const peers: Array<{ ip: string; names: ReadonlyArray<string> }> = []
      for (const member of mine.flatMap((n) => n.members)) {
        const peer = records.get(member.workspace)
        if (seen.has(member.workspace) || peer === undefined || !isListed(member.workspace)) continue
        seen.add(member.workspace)
        peers.push({ ip: member.ip, names: namesOf(peer) })
      }
      const handle = target === starting?.name ? Option.some(starting.handle) : vmHandleOf(ws)
      if (Option.isNone(handle)) continue
      const data = new TextEncoder().encode(
        hostsFile(selfIp === undefined ? undefined : { ip: selfIp, names: namesOf(ws) }, peers)
      )
      yield* Effect.scoped(
        Effect.flatMap(
          channel.connect(handle.value.channel, { timeout: "5 seconds" }),
          (connection) => connection.putFile({ path: "/etc/hosts", mode: 0o644, data: Stream.make(data) })
        )
      ).pipe(
        Effect.catchAll((error) =>
          Effect.logWarning(`cannot update /etc/hosts of ${target}: ${error.message}`)
        )
      )
    }
  })

/**
 * Runs a VM launch with the workspace's named networks around it: NICs prepared before, taps
 * attached and /etc/hosts pushed after (a failure there kills the VM); on failure, namespaces nobody
 * needs are removed.
 */
export const launchWithNetworks = <E, R>(
  workspace: Workspace,
  launch: (nics: ReadonlyArray<NicAttachment>) => Effect.Effect<VmHandle, E, R>
) =>
  Effect.gen(function*() {
    const hypervisor = yield* Hypervisor
    const nics = yield* prepareNetworks(workspace)
    const handle = yield* launch(nics)
    yield* attachNetworks(workspace, nics, handle).pipe(
      Effect.tapError(() => hypervisor.kill(handle).pipe(Effect.ignore))
    )
    return handle
  }).pipe(
    Effect.tapError(() =>
      workspace.networks.length === 0
        ? Effect.void
        : refreshHosts(workspace.networks, undefined, workspace.name).pipe(
          Effect.zipRight(reapNetworks),
          Effect.ignore
        )
    )
  )

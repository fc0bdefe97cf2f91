/**
 * Named networks: the `network` verbs (create, list, inspect, remove) and, at create, the
 * `--network` flags checked and a stable address allocated per member. What happens to a member's
 * networks while it runs (plumbing at start, /etc/hosts, teardown, the reaper) is in
 * internal/NetworkPlumbing.ts.
 */
import { Effect, Option } from "effect"
import { Conflict, InvalidInput, Unsupported } from "../domain/Errors.ts"
import { networkNameProblem, reservedNetworkNames } from "../domain/NetworkName.ts"
import { isLive } from "../domain/State.ts"
import type { NetworkMode, PublishedPort, Workspace } from "../domain/Workspace.ts"
import { Hypervisor } from "../services/Hypervisor.ts"
import { Networks } from "../services/Networks.ts"
import { StateStore } from "../services/StateStore.ts"
import { reapNetworks } from "./internal/NetworkPlumbing.ts"

// The start-and-stop plumbing was exported from this module, which the package publishes as programs/Network.
export {
  attachNetworks,
  detachNetworks,
  forgetNetworks,
  launchWithNetworks,
  preflightNetworking,
  prepareNetworks,
  reapNetworks
} from "./internal/NetworkPlumbing.ts"

// ---------- the `network` verbs ----------

export const networkCreate = Effect.fn("networkCreate")(function*(name: string, subnet?: string) {
  return yield* (yield* Networks).create(name, subnet)
})

export const networkList = Effect.fn("networkList")(function*() {
  return yield* (yield* Networks).list
})

export const networkInspect = Effect.fn("networkInspect")(function*(name: string) {
  const network = yield* (yield* Networks).inspect(name)
  const store = yield* StateStore
  const members = yield* Effect.forEach(network.members, (member) =>
    store.find(member.workspace).pipe(
      Effect.map((ws) => ({
        ...member,
        state: Option.match(ws, { onNone: () => "deleted", onSome: (w) => w.state })
      }))
    ))
  return { network, members }
})

/** Refuses while members exist; `force` detaches the stopped ones first (never a running one). */
export const networkRemove = Effect.fn("networkRemove")(
  function*(name: string, options: { readonly force?: boolean } = {}) {
    const networks = yield* Networks
    const store = yield* StateStore
    const network = yield* networks.inspect(name)
    if (options.force) {
      const live: Array<string> = []
      for (const member of network.members) {
        const ws = yield* store.find(member.workspace)
        if (Option.isSome(ws) && isLive(ws.value.state)) live.push(member.workspace)
      }
      if (live.length > 0) {
        return yield* new Conflict({
          message: `network ${name} has running members: ${live.join(", ")}`,
          remediation: `halt them first: ${live.map((ws) => `microagent halt ${ws}`).join("; ")}`
        })
      }
      for (const member of network.members) {
        yield* store.update(member.workspace, (ws) =>
          ({
            ...ws,
            networks: ws.networks.filter((n) => n !== name)
          }) as Workspace).pipe(
            Effect.catchTag("NotFound", () => Effect.void)
          )
        yield* networks.leave(name, member.workspace)
      }
    }
    yield* networks.remove(name)
    yield* reapNetworks
    return { network: name, removed: true }
  }
)

// ---------- create: flags to a mode and names, checked ----------

/** `--network` values: at most one of `user` and `isolated`, plus network names. */
export const resolveNetworkFlags = (values: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const modes = [...new Set(values.filter((v) => v === "user" || v === "isolated"))] as Array<NetworkMode>
    if (modes.length > 1) {
      return yield* new InvalidInput({
        message: "--network user and --network isolated contradict each other",
        remediation: "pick one mode; named networks can be added to either"
      })
    }
    const names = [...new Set(values.filter((v) => v !== "user" && v !== "isolated"))]
    for (const name of names) {
      const problem = reservedNetworkNames.includes(name)
        ? `"${name}" is not a mode`
        : networkNameProblem(name)
      if (problem !== undefined) {
        return yield* new InvalidInput({
          message: `invalid --network: ${problem}`,
          remediation: "--network takes user, isolated or the name of a network (microagent network ls)"
        })
      }
    }
    return { network: modes.at(0), networks: names }
  })

/** Before anything is made: published ports need the user NIC, named networks must exist and be supported. */
export const checkNetworking = Effect.fn("checkNetworking")(function*(options: {
  readonly network?: NetworkMode | undefined
  readonly ports?: ReadonlyArray<PublishedPort> | undefined
  readonly networks?: ReadonlyArray<string> | undefined
}) {
  if (options.network === "isolated" && (options.ports ?? []).length > 0) {
    return yield* new InvalidInput({
      message: "--publish needs a network: an isolated workspace has no NIC to forward to",
      remediation: "drop --publish, or use --network user"
    })
  }
  const names = options.networks ?? []
  if (names.length === 0) return
  const hypervisor = yield* Hypervisor
  if (!hypervisor.capabilities.has("NamedNetworks")) {
    return yield* new Unsupported({
      message: `the ${hypervisor.backend} backend does not support named networks`,
      remediation: "use --backend qemu",
      backend: hypervisor.backend,
      feature: "named networks"
    })
  }
  const networks = yield* Networks
  for (const name of names) yield* networks.inspect(name)
})

/** Allocates the workspace's address on each network; on failure, leaves the ones joined. */
export const joinNetworks = Effect.fn("joinNetworks")(
  function*(workspace: string, names: ReadonlyArray<string>) {
    const networks = yield* Networks
    const joined: Array<string> = []
    yield* Effect.forEach(
      names,
      (name) => networks.join(name, workspace).pipe(Effect.tap(() => joined.push(name)))
    ).pipe(
      Effect.tapError(() =>
        Effect.forEach(joined, (name) => networks.leave(name, workspace)).pipe(Effect.ignore)
      )
    )
  }
)

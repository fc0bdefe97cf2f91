/** The RPC handlers of what outlives a workspace: volumes, named networks and artifact collections. */
import { Effect } from "effect"
import { withBackend } from "../layers/backends/WorkspaceBackends.ts"
import { getArtifact, listArtifacts, removeArtifacts } from "../programs/Artifacts.ts"
import { networkCreate, networkInspect, networkList, networkRemove } from "../programs/Network.ts"
import { volumeCreate, volumeInspect, volumeList, volumeRemove, volumeResize } from "../programs/Volume.ts"
import { StateStore } from "../services/StateStore.ts"
import type { HandlersFor, Local } from "./HandlerContext.ts"

/** The workspace's backend while it exists; the default one (unused) once only its collection is left. */
const withArtifactBackend = <A, E, R>(name: string, effect: Effect.Effect<A, E, R>) =>
  Effect.flatMap(
    Effect.flatMap(StateStore, (store) => store.find(name)),
    (found) => withBackend(found._tag === "Some" ? found.value.backend : undefined, effect)
  )

export const makeStorageHandlers = (
  local: Local
): HandlersFor<
  | "volumeCreate"
  | "volumeList"
  | "volumeInspect"
  | "volumeRemove"
  | "volumeResize"
  | "networkCreate"
  | "networkList"
  | "networkInspect"
  | "networkRemove"
  | "artifactsList"
  | "artifactsGet"
  | "artifactsRemove"
> => ({
  // Holders are checked against the default backend (the runtime reconciles every backend anyway).
  volumeCreate: (p) => local(withBackend(undefined, volumeCreate(p.name, p.sizeMiB))),
  volumeList: () => local(withBackend(undefined, volumeList())),
  volumeInspect: (p) => local(withBackend(undefined, volumeInspect(p.name))),
  volumeRemove: (p) => local(withBackend(undefined, volumeRemove(p.name, { force: p.force }))),
  volumeResize: (p) => local(withBackend(undefined, volumeResize(p.name, p.sizeMiB))),
  networkCreate: (p) => local(withBackend(undefined, networkCreate(p.name, p.subnet))),
  networkList: () => local(withBackend(undefined, networkList())),
  networkInspect: (p) => local(withBackend(undefined, networkInspect(p.name))),
  networkRemove: (p) => local(withBackend(undefined, networkRemove(p.name, { force: p.force ?? false }))),
  artifactsList: (p) => local(listArtifacts(p.name)),
  // A collection outlives its workspace, so only a live one needs its backend.
  artifactsGet: (p) => local(withArtifactBackend(p.name, getArtifact(p.name, p.artifact, p.hostPath))),
  artifactsRemove: (p) => local(removeArtifacts(p.name))
})

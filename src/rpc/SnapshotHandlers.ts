/** The RPC handlers of snapshots and what is made from a workspace: snapshots, commits, clones and forks. */
import { Effect, Either } from "effect"
import { parseSnapshotRef } from "../domain/SnapshotRestore.ts"
import { withWorkspaceBackend } from "../layers/backends/WorkspaceBackends.ts"
import { RegistryHttp } from "../layers/registry/Http.ts"
import { clone, createFromSnapshot } from "../programs/Clone.ts"
import { workspaceCommit } from "../programs/Commit.ts"
import { fork } from "../programs/Fork.ts"
import { snapshotCreate, snapshotDelete, snapshotList } from "../programs/Snapshot.ts"
import { Home } from "../services/Home.ts"
import type { HandlersFor, Local } from "./HandlerContext.ts"

export const makeSnapshotHandlers = (
  local: Local
): HandlersFor<
  | "snapshotCreate"
  | "workspaceCommit"
  | "clone"
  | "fork"
  | "createFromSnapshot"
  | "snapshotList"
  | "snapshotDelete"
> => ({
  snapshotCreate: (p) =>
    local(withWorkspaceBackend(
      p.name,
      snapshotCreate(p.name, { tag: p.tag, forensic: p.forensic, secretValues: p.secretValues })
    )),
  workspaceCommit: (p) =>
    local(withWorkspaceBackend(
      p.name,
      Effect.flatMap(Home, (home) =>
        workspaceCommit(p.name, p.ref, {
          push: p.push,
          diff: p.diff,
          message: p.message,
          author: p.author,
          insecureRegistry: p.insecureRegistry
        }).pipe(Effect.provide(RegistryHttp.layer(home.root))))
    )),
  clone: (p) => local(withWorkspaceBackend(p.source, clone(p.source, p.target))),
  fork: (p) =>
    local(withWorkspaceBackend(
      p.name,
      fork(p.name, { count: p.count, namePrefix: p.namePrefix, secretValues: p.secretValues })
    )),
  createFromSnapshot: (p) =>
    local(
      Either.match(parseSnapshotRef(p.snapshot), {
        onLeft: (error) => Effect.fail(error),
        onRight: (ref) => withWorkspaceBackend(ref.workspace, createFromSnapshot(p.name, p.snapshot))
      })
    ),
  snapshotList: (p) => local(withWorkspaceBackend(p.name, snapshotList(p.name))),
  snapshotDelete: (p) => local(withWorkspaceBackend(p.name, snapshotDelete(p.name, p.tag)))
})

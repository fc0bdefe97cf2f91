/**
 * The RPC handlers of a workspace's lifecycle: run, create, start, exec, halt, pause, delete, copy and
 * resize. The payloads are the programs' requests (domain/Requests.ts) and are passed on as they are.
 */
import { Effect, Stream } from "effect"
import type { ExecCommand } from "../domain/Requests.ts"
import { profiles } from "../domain/Workspace.ts"
import {
  streamWithWorkspaceBackend,
  withBackend,
  withWorkspaceBackend
} from "../layers/backends/WorkspaceBackends.ts"
import { Ext4Disks } from "../layers/rootfs/Ext4Resize.ts"
import { apply } from "../programs/Apply.ts"
import { copyIn, copyOut } from "../programs/Cp.ts"
import { create } from "../programs/Create.ts"
import { remove } from "../programs/Delete.ts"
import { exec, execStream } from "../programs/Exec.ts"
import { halt, kill } from "../programs/Halt.ts"
import { execRequestFor } from "../programs/internal/Requests.ts"
import { pause, resume } from "../programs/Pause.ts"
import { plan } from "../programs/Plan.ts"
import { quarantine } from "../programs/Quarantine.ts"
import { resize, resizePlan } from "../programs/Resize.ts"
import { run } from "../programs/Run.ts"
import { start } from "../programs/Start.ts"
import { StateStore } from "../services/StateStore.ts"
import type { HandlersFor, Local, LocalStream } from "./HandlerContext.ts"

const stdinOf = (bytes: Uint8Array | undefined) => (bytes === undefined ? undefined : Stream.make(bytes))

/** The exec request for a workspace: the image's and the workspace's defaults under the caller's fields. */
const requestFor = (command: ExecCommand) =>
  Effect.map(
    Effect.flatMap(StateStore, (store) => store.get(command.name)),
    (workspace) => execRequestFor(workspace, command.argv, command)
  )

export const makeLifecycleHandlers = (
  local: Local,
  localStream: LocalStream
): HandlersFor<
  | "run"
  | "create"
  | "plan"
  | "apply"
  | "start"
  | "exec"
  | "execStream"
  | "halt"
  | "kill"
  | "pause"
  | "quarantine"
  | "resume"
  | "delete"
  | "profiles"
  | "cp"
  | "resize"
> => ({
  run: (p) => local(withBackend(p.backend, run({ ...p, stdin: stdinOf(p.stdin) }))),
  create: (p) => local(withBackend(p.backend, create(p))),
  plan: (p) => local(withBackend(p.backend, plan(p))),
  apply: ({ dryRun, name, ...fields }) => local(apply(name, fields, { dryRun })),
  start: (p) => local(withWorkspaceBackend(p.name, start(p.name, p))),
  exec: (p) =>
    local(withWorkspaceBackend(
      p.name,
      Effect.flatMap(requestFor(p), (request) => exec(p.name, request, stdinOf(p.stdin)))
    )),
  execStream: (p) =>
    localStream(streamWithWorkspaceBackend(
      p.name,
      Stream.unwrap(Effect.map(requestFor(p), (request) => execStream(p.name, request, stdinOf(p.stdin))))
    )),
  halt: (p) => local(withWorkspaceBackend(p.name, halt(p.name, p))),
  kill: (p) => local(withWorkspaceBackend(p.name, kill(p.name, p))),
  pause: (p) => local(withWorkspaceBackend(p.name, pause(p.name, p))),
  quarantine: (p) => local(withWorkspaceBackend(p.name, quarantine(p.name, p))),
  resume: (p) => local(withWorkspaceBackend(p.name, resume(p.name, p))),
  delete: (p) =>
    local(
      withWorkspaceBackend(p.name, remove(p.name, p)).pipe(
        // Deleting what is not there is not an error: delete is idempotent.
        Effect.catchTag("NotFound", () => Effect.succeed({ workspace: p.name, deleted: false }))
      )
    ),
  profiles: () => Effect.succeed({ profiles }),
  cp: (p) =>
    local(withWorkspaceBackend(
      p.name,
      p.direction === "in"
        ? copyIn(p.name, p.hostPath, p.guestPath)
        : copyOut(p.name, p.guestPath, p.hostPath)
    )),
  resize: (p) =>
    local(withWorkspaceBackend(
      p.name,
      p.preview === true
        ? Effect.map(resizePlan(p.name, p.sizeMiB), (plan) => ({
          workspace: p.name,
          from_size_mib: plan.fromMiB,
          to_size_mib: p.sizeMiB
        }))
        : Effect.provide(resize(p.name, p.sizeMiB), Ext4Disks)
    ))
})

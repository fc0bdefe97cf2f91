/**
 * `quarantine`: takes a running or paused workspace out of action and into custody, in the order that
 * keeps it contained whatever fails later:
 *
 * 1. the record moves to `quarantined` first (durable in the store): from then on `start`, `resume`,
 *    `exec`, `cp`, `resize`, `commit`, snapshot restores and a plain `delete` all refuse it;
 * 2. the vCPUs are frozen;
 * 3. every network link is cut in the VMM, and the egress mediation (namespace, mediator) and the
 *    credential broker are ended;
 * 4. evidence is captured into `<workspace dir>/custody/<id>/`: the console log, the events, the egress
 *    audit log and, unless `capture: false`, the VM's memory and device state and a copy of its disk;
 * 5. the VM is stopped; the custody record stays until `delete --force`.
 *
 * A capture that fails leaves the VM frozen and cut off, and the command fails: running it again
 * retries the capture (or `capture: false` gives up the evidence) and then stops the VM.
 */
import { Effect, Option, Schema } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Conflict } from "../domain/Errors.ts"
import type { QuarantineRequest } from "../domain/Requests.ts"
import type { Workspace } from "../domain/Workspace.ts"
import { Egress } from "../services/Egress.ts"
import { Home } from "../services/Home.ts"
import { Hypervisor, memoryFileOf } from "../services/Hypervisor.ts"
import { StateStore } from "../services/StateStore.ts"
import { releaseBroker } from "./internal/Brokering.ts"
import { copyDiskFlat } from "./internal/DiskOverlay.ts"
import { releaseModel } from "./internal/ModelPairing.ts"
import { releaseMounts } from "./internal/Mounts.ts"
import { detachNetworks } from "./internal/NetworkPlumbing.ts"
import { reapOrphanVmms } from "./internal/Orphans.ts"
import { ownedByMe, reconcile, requireBackend, vmHandleOf, withoutOwner } from "./internal/Reconcile.ts"

/** A quarantine's request (domain/Requests.ts) without the name. */
export type QuarantineOptions = Omit<QuarantineRequest, "name">

/** What a quarantine did, step by step, and where its evidence is. */
export class QuarantineResult extends Schema.Class<QuarantineResult>("QuarantineResult")({
  workspace: Schema.String,
  state: Schema.Literal("quarantined"),
  reason: Schema.String,
  frozen: Schema.Boolean,
  severed: Schema.Boolean,
  captured: Schema.Boolean,
  stopped: Schema.Boolean,
  custody: Schema.String,
  files: Schema.Array(Schema.String)
}) {}

const manifestFile = "manifest.json"

/** The custody directory of a quarantine in progress or done, if any. */
const custodyOf = (dir: string) => {
  const root = NodePath.join(dir, "custody")
  const entries = NodeFs.existsSync(root) ? NodeFs.readdirSync(root).sort() : []
  return entries.length === 0 ? undefined : NodePath.join(root, entries.at(-1)!)
}

const copyIfThere = (from: string, to: string) =>
  Effect.sync(() => {
    if (!NodeFs.existsSync(from)) return false
    NodeFs.copyFileSync(from, to)
    NodeFs.chmodSync(to, 0o600)
    return true
  })

export const quarantine = Effect.fn("quarantine")(function*(name: string, options: QuarantineOptions = {}) {
  const store = yield* StateStore
  const hypervisor = yield* Hypervisor
  const home = yield* Home
  const capture = options.capture ?? true
  const current = yield* store.get(name).pipe(Effect.flatMap(reconcile))
  yield* requireBackend(current)
  const workspaceDir = home.workspaceDir(name)

  // Done before: the custody record is what it was.
  const done = current.state === "quarantined" && current.vm === undefined
    ? custodyOf(workspaceDir)
    : undefined
  if (done !== undefined && NodeFs.existsSync(NodePath.join(done, manifestFile))) {
    const manifest = JSON.parse(NodeFs.readFileSync(NodePath.join(done, manifestFile), "utf8")) as {
      readonly reason: string
      readonly frozenProcessState: boolean
      readonly files: ReadonlyArray<string>
    }
    return new QuarantineResult({
      workspace: name,
      state: "quarantined",
      reason: manifest.reason,
      frozen: false,
      severed: true,
      captured: manifest.frozenProcessState,
      stopped: true,
      custody: done,
      files: manifest.files
    })
  }

  // 1. The marker. A second run (after a failed capture) finds it set and goes on from step 2.
  let marked: Workspace = current
  if (current.state !== "quarantined") {
    if (current.state !== "running" && current.state !== "paused") {
      return yield* new Conflict({
        message: `workspace ${name} is ${current.state}: only a running or paused workspace is quarantined`,
        remediation:
          `a stopped workspace runs nothing; keep it stopped, or delete it (microagent delete ${name})`
      })
    }
    const reason = options.reason ?? ""
    marked = yield* store.transition(name, "quarantine", {
      patch: yield* ownedByMe,
      detail: reason === "" ? "quarantined" : `quarantined: ${reason}`
    })
  }
  const handle = vmHandleOf(marked)
  const alive = Option.isSome(handle) && (yield* hypervisor.inspect(handle.value)) !== "exited"

  // 2 and 3. Frozen, then cut off: the VMM's links, then the mediation behind them.
  if (alive) {
    yield* hypervisor.pause(handle.value)
    yield* hypervisor.sever(handle.value)
  }
  const egress = yield* Effect.serviceOption(Egress)
  if (Option.isSome(egress)) yield* egress.value.release(name)
  // The credential broker is a way out too: it ends with the links.
  yield* releaseBroker(marked)

  // 4. Evidence, into a custody directory made once per quarantine.
  const custody = custodyOf(workspaceDir) ?? NodePath.join(
    workspaceDir,
    "custody",
    `quarantine-${new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z")}`
  )
  yield* Effect.sync(() => NodeFs.mkdirSync(custody, { recursive: true, mode: 0o700 }))
  const files: Array<string> = []
  const keep = (file: string) => (copied: boolean) => copied && !files.includes(file) ? files.push(file) : 0
  yield* copyIfThere(NodePath.join(marked.runtimeDir, "console.log"), NodePath.join(custody, "console.log"))
    .pipe(
      Effect.map(keep("console.log"))
    )
  if (Option.isSome(egress)) {
    yield* copyIfThere(egress.value.logPath(name), NodePath.join(custody, "egress.jsonl")).pipe(
      Effect.map(keep("egress.jsonl"))
    )
  }
  yield* copyIfThere(
    NodePath.join(workspaceDir, "broker-access.jsonl"),
    NodePath.join(custody, "broker-access.jsonl")
  ).pipe(Effect.map(keep("broker-access.jsonl")))
  const events = yield* store.events(name)
  yield* Effect.sync(() => {
    NodeFs.writeFileSync(
      NodePath.join(custody, "events.jsonl"),
      events.map((event) => JSON.stringify(event)).join("\n") + "\n",
      { mode: 0o600 }
    )
    keep("events.jsonl")(true)
  })
  let captured = false
  if (capture && alive) {
    const state = NodePath.join(custody, "vm.state")
    if (!NodeFs.existsSync(state) || NodeFs.statSync(state).size === 0) {
      yield* hypervisor.saveState(handle.value, state)
    }
    keep("vm.state")(true)
    if (NodeFs.existsSync(memoryFileOf(state))) keep(NodePath.basename(memoryFileOf(state)))(true)
    const disk = NodePath.join(custody, "disk.ext4")
    if (!NodeFs.existsSync(disk)) yield* copyDiskFlat(marked.rootfsPath, disk)
    keep("disk.ext4")(true)
    captured = true
  }
  const reason = options.reason ?? ""
  yield* Effect.sync(() =>
    NodeFs.writeFileSync(
      NodePath.join(custody, manifestFile),
      JSON.stringify(
        {
          workspace: name,
          reason,
          quarantinedAt: new Date().toISOString(),
          forensic: true,
          restorable: false,
          frozenProcessState: captured,
          image: marked.image.ref,
          files: [...files].sort()
        },
        null,
        2
      ) + "\n",
      { mode: 0o600 }
    )
  )

  // 5. Stopped into custody: nothing of the VM runs any more.
  yield* Effect.uninterruptible(Effect.gen(function*() {
    if (Option.isSome(handle)) yield* hypervisor.kill(handle.value)
    yield* reapOrphanVmms({ workspace: name })
    const stopped = yield* store.update(name, (ws) => withoutOwner({ ...ws, vm: undefined } as Workspace))
    yield* releaseMounts(stopped)
    yield* releaseModel(stopped)
    yield* detachNetworks(stopped)
    yield* store.appendEvent(name, {
      type: "custody",
      detail: `${captured ? "captured" : "logs only"}: ${NodePath.relative(workspaceDir, custody)}`
    })
  }))
  return new QuarantineResult({
    workspace: name,
    state: "quarantined",
    reason,
    frozen: alive,
    severed: true,
    captured,
    stopped: true,
    custody,
    files: [...files].sort()
  })
})

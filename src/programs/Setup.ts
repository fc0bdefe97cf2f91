/**
 * Setup: the workspace's setup commands, run once, in order, before the entrypoint of the first start
 * that gets through them. Success is recorded (`setupDone`) with the verification baseline: the root
 * disk's SHA-256 and the boot configuration. A failing step leaves setup pending, so the next start
 * runs it all again, and fails this start with the step's output. Each step's outcome and output are
 * in the events.
 */
import { DateTime, Effect, Option } from "effect"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import { Permanent } from "../domain/Errors.ts"
import type { SetupBaseline, Workspace } from "../domain/Workspace.ts"
import { Hypervisor, type VmHandle } from "../services/Hypervisor.ts"
import { KernelCache } from "../services/KernelCache.ts"
import { StateStore } from "../services/StateStore.ts"
import { guestRun } from "./Entrypoint.ts"
import { guestFailure } from "./Exec.ts"
import { syncGuest } from "./internal/GuestSync.ts"
import { vmHandleOf } from "./internal/Reconcile.ts"
import { execRequestFor } from "./internal/Requests.ts"

/** Bytes of each step's output kept in its event. */
const eventOutputLimit = 16 * 1024

const tail = (text: string) => text.length > eventOutputLimit ? `…${text.slice(-eventOutputLimit)}` : text

/** Runs pending setup in the running workspace; answers the workspace as recorded afterwards. */
export const runSetup = Effect.fn("runSetup")(function*(workspace: Workspace) {
  const store = yield* StateStore
  const handle = vmHandleOf(workspace)
  if (workspace.setup.length === 0 || workspace.setupDone !== undefined || Option.isNone(handle)) {
    return workspace
  }
  const total = workspace.setup.length
  for (const [index, command] of workspace.setup.entries()) {
    const step = `setup ${index + 1}/${total}`
    const outcome = yield* guestRun(
      handle.value,
      execRequestFor(workspace, ["/bin/sh", "-c", command], { timeoutSeconds: 3600 })
    ).pipe(Effect.mapError(guestFailure(workspace.name)))
    const output = tail(`${outcome.stdout}${outcome.stderr}`).trimEnd()
    const failed = outcome.status !== "exited" || outcome.exitCode !== 0
    yield* store.appendEvent(workspace.name, {
      type: "setup",
      detail: `${step} ${failed ? `failed (${outcome.status} ${outcome.exitCode})` : "ok"}: ${command}${
        output === "" ? "" : `\n${output}`
      }`
    })
    if (failed) {
      return yield* new Permanent({
        message:
          `workspace ${workspace.name}: ${step} failed (${outcome.status} ${outcome.exitCode}): ${command}${
            output === "" ? "" : `\n${output}`
          }`,
        remediation: `setup stays pending: fix the cause and start again (microagent start ${workspace.name})`
      })
    }
  }
  const baseline = yield* recordBaseline(workspace, handle.value)
  yield* store.appendEvent(workspace.name, {
    type: "baseline",
    detail: `recorded after setup${
      baseline.rootfsSha256 === undefined ? "" : `: rootfs sha256:${baseline.rootfsSha256.slice(0, 12)}…`
    }`
  })
  return yield* store.update(
    workspace.name,
    (ws) => ({ ...ws, setupDone: baseline.recordedAt, setupBaseline: baseline }) as Workspace
  )
})

/** SHA-256 of a file, streamed (a sparse disk reads its holes as zeros). */
const fileSha256 = (path: string) =>
  Effect.async<string, Error>((resume) => {
    const hash = NodeCrypto.createHash("sha256")
    const stream = NodeFs.createReadStream(path, { highWaterMark: 4 << 20 })
    stream.on("data", (chunk) => hash.update(chunk))
    stream.on("end", () => resume(Effect.succeed(hash.digest("hex"))))
    stream.on("error", (error) => resume(Effect.fail(error)))
    return Effect.sync(() => stream.destroy())
  })

/**
 * The baseline: the guest flushes its writes (`sync`), the VM is held still (paused, where the backend
 * can) while the disk image is read, then runs on. No service or entrypoint runs yet, so the disk is
 * what setup left. The digest is of the disk file as the backend keeps it; a backend without one (the
 * fake's directory) records the boot configuration alone.
 */
const recordBaseline = (workspace: Workspace, handle: VmHandle) =>
  Effect.gen(function*() {
    const hypervisor = yield* Hypervisor
    const kernels = yield* Effect.serviceOption(KernelCache)
    const boot = Option.isSome(kernels)
      ? yield* kernels.value.ensure(process.arch === "arm64" ? "aarch64" : "x86_64").pipe(Effect.option)
      : Option.none()
    const disk = workspace.rootfsPath
    const isFile = NodeFs.existsSync(disk) && NodeFs.statSync(disk).isFile()
    let rootfsSha256: string | undefined
    if (isFile) {
      yield* syncGuest(handle)
      const hold = hypervisor.capabilities.has("PauseResume")
      rootfsSha256 = yield* (hold
        ? Effect.acquireUseRelease(
          hypervisor.pause(handle),
          () => fileSha256(disk),
          () => hypervisor.resume(handle).pipe(Effect.ignore)
        )
        : fileSha256(disk)).pipe(
          Effect.mapError((error) =>
            new Permanent({
              message:
                `workspace ${workspace.name}: cannot read its disk for the setup baseline: ${error.message}`
            })
          )
        )
    }
    const resources = workspace.launched ?? workspace.resources
    return {
      recordedAt: yield* DateTime.now,
      ...(rootfsSha256 === undefined ? {} : { rootfsSha256, rootfsBytes: NodeFs.statSync(disk).size }),
      boot: {
        ...(workspace.image.digest === undefined ? {} : { imageDigest: workspace.image.digest }),
        ...(Option.isSome(boot)
          ? { kernelSha256: boot.value.kernelSha256, initrdSha256: boot.value.initrdSha256 }
          : {}),
        memoryMiB: resources.memoryMiB,
        cpus: resources.cpus,
        hostname: workspace.hostname,
        network: workspace.network
      }
    } satisfies SetupBaseline
  })

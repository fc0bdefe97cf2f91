/**
 * A workspace's credential broker across its lifecycle (domain/Broker.ts): each start checks the
 * backend can broker, boots the VM with a guest channel per endpoint, and once the VM runs starts the
 * broker with the values of the broker-held secrets, which never reach the guest. Halt, kill,
 * quarantine and a failed start end it (it also ends by itself within a second of its VM).
 */
import { Effect, Option } from "effect"
import { Unsupported } from "../../domain/Errors.ts"
import type { Workspace } from "../../domain/Workspace.ts"
import { CredentialBroker } from "../../services/CredentialBroker.ts"
import { Home } from "../../services/Home.ts"
import type { VmHandle } from "../../services/Hypervisor.ts"
import { StateStore } from "../../services/StateStore.ts"
import type { SecretValues } from "./SecretDelivery.ts"

/** The broker service; backends without one (the fake) cannot start a workspace with endpoints. */
const brokerService = Effect.serviceOption(CredentialBroker).pipe(
  Effect.flatMap(Option.match({
    onSome: Effect.succeed,
    onNone: () =>
      Effect.fail(
        new Unsupported({
          message: "this backend has no credential broker (it needs a guest channel per endpoint)",
          remediation: "use the qemu backend",
          feature: "credential broker"
        })
      )
  }))
)

/** Before anything changes: a workspace with endpoints needs a backend that brokers. */
export const preflightBroker = (workspace: Workspace) =>
  workspace.brokers.length === 0 ? Effect.void : Effect.asVoid(brokerService)

/** The values a start delivers into the guest: not those the broker holds. */
export const guestValues = (workspace: Workspace, values: SecretValues): SecretValues => {
  const held = new Set(workspace.secrets.filter((s) => s.use === "broker").map((s) => s.name))
  return values.filter((v) => !held.has(v.name))
}

/** Once the VM runs: its broker starts with the broker-held values. */
export const attachBroker = (workspace: Workspace, handle: VmHandle, values: SecretValues) =>
  Effect.gen(function*() {
    if (workspace.brokers.length === 0) return
    const broker = yield* brokerService
    const home = yield* Home
    const store = yield* StateStore
    const held = new Set(workspace.brokers.flatMap((b) => b.secrets))
    const { pid } = yield* broker.attach({
      workspace: workspace.name,
      runtimeDir: workspace.runtimeDir,
      workspaceDir: home.workspaceDir(workspace.name),
      endpoints: workspace.brokers,
      vmmPid: handle.pid,
      vmmStartTime: handle.pidStartTime,
      values: values.filter((v) => held.has(v.name))
    })
    yield* store.appendEvent(workspace.name, {
      type: "broker",
      detail: `broker pid ${pid}: ${
        workspace.brokers.map((b) =>
          `127.0.0.1:${b.guestPort} -> ${b.upstream}${
            b.secrets.length === 0 ? "" : ` (${b.secrets.join(", ")})`
          }`
        ).join("; ")
      }`
    }).pipe(Effect.ignore)
  })

/** Ends the workspace's broker now (nothing running is fine). */
export const releaseBroker = (workspace: Workspace) =>
  workspace.brokers.length === 0
    ? Effect.void
    : Effect.serviceOption(CredentialBroker).pipe(
      Effect.flatMap(Option.match({
        onNone: () => Effect.void,
        onSome: (broker) => broker.release(workspace.runtimeDir)
      }))
    )

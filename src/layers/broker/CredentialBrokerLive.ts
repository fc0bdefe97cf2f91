/**
 * The credential broker as a detached process (bin/microagent-broker.mjs, src/bridge/BrokerBridge.ts)
 * per running workspace: its configuration (no secret in it) on the command line, the values on its
 * stdin, which is then closed; "ready" on its stdout says it has them. Its pid and start time are in
 * `broker.pid` in the runtime directory, so a later session ends the one an earlier session left.
 */
import { Effect, Layer, Redacted } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Permanent } from "../../domain/Errors.ts"
import { CredentialBroker, type CredentialBrokerShape } from "../../services/CredentialBroker.ts"
import { brokerSocketOf } from "../../services/Hypervisor.ts"
import { startDetached } from "../process/Detached.ts"
import { installedFile } from "../process/Installed.ts"
import { isAlive, signal, startTimeOf, waitGone } from "../process/Processes.ts"

/** `$MICROAGENT_BROKER_SCRIPT`, else the bundle beside this module or in an ancestor's bin/. */
const brokerScript = (): string | undefined =>
  installedFile("MICROAGENT_BROKER_SCRIPT", ["microagent-broker.mjs", "bin/microagent-broker.mjs"])

const pidFile = (runtimeDir: string) => NodePath.join(runtimeDir, "broker.pid")

/** How long a starting broker has to say it holds the values. */
const readyTimeoutMs = 10_000

const release: CredentialBrokerShape["release"] = (runtimeDir) =>
  Effect.gen(function*() {
    const recorded = yield* Effect.sync(() => {
      try {
        const [pid, startTime] = NodeFs.readFileSync(pidFile(runtimeDir), "utf8").trim().split(" ")
        return { pid: Number(pid), startTime }
      } catch {
        return undefined
      }
    })
    if (recorded === undefined || !Number.isInteger(recorded.pid) || recorded.pid <= 0) return
    if (isAlive(recorded.pid, recorded.startTime)) {
      signal(recorded.pid, "SIGTERM")
      if (!(yield* waitGone(recorded.pid, recorded.startTime, "2 seconds"))) signal(recorded.pid, "SIGKILL")
    }
    yield* Effect.sync(() => NodeFs.rmSync(pidFile(runtimeDir), { force: true }))
  })

const attach: CredentialBrokerShape["attach"] = (attachment) =>
  Effect.gen(function*() {
    const script = brokerScript()
    if (script === undefined) {
      return yield* new Permanent({
        message: "the credential broker (microagent-broker.mjs) is missing",
        remediation: "reinstall microagent, or set MICROAGENT_BROKER_SCRIPT"
      })
    }
    yield* release(attachment.runtimeDir)
    const config = {
      workspace: attachment.workspace,
      vmmPid: attachment.vmmPid,
      ...(attachment.vmmStartTime === undefined ? {} : { vmmStartTime: attachment.vmmStartTime }),
      auditLog: NodePath.join(attachment.workspaceDir, "broker-access.jsonl"),
      captureLog: NodePath.join(attachment.workspaceDir, "broker-capture.jsonl"),
      endpoints: attachment.endpoints.map((endpoint, i) => ({
        socket: brokerSocketOf(attachment.runtimeDir, i),
        upstream: endpoint.upstream,
        secrets: endpoint.secrets,
        ...(endpoint.ca === undefined ? {} : { ca: endpoint.ca }),
        capture: endpoint.capture,
        proxy: endpoint.proxy,
        connectAllow: endpoint.connectAllow,
        assurance: endpoint.assurance,
        ...(endpoint.grant === undefined ? {} : { grant: endpoint.grant }),
        guestPort: endpoint.guestPort
      }))
    }
    const log = NodePath.join(attachment.runtimeDir, "broker.log")
    // The values, then end of input: they live in the broker's memory from here on.
    const values: Record<string, string> = {}
    for (const { name, value } of attachment.values) {
      values[name] = Buffer.from(Redacted.value(value)).toString("base64")
    }
    const pid = yield* startDetached({
      script,
      args: [JSON.stringify(config)],
      input: JSON.stringify(values),
      log,
      readyTimeoutMs
    }).pipe(
      Effect.mapError((why) =>
        new Permanent({
          message: `workspace ${attachment.workspace}: the credential broker did not start: ${why}`,
          remediation: `see ${log}`
        })
      )
    )
    yield* Effect.sync(() =>
      NodeFs.writeFileSync(pidFile(attachment.runtimeDir), `${pid} ${startTimeOf(pid) ?? ""}\n`, {
        mode: 0o600
      })
    )
    return { pid }
  })

export const layer = Layer.succeed(CredentialBroker, { attach, release })

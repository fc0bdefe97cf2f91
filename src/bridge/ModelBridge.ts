/**
 * The model bridge: one detached host process per running paired workspace. It connects to the VMM's
 * end of the model channel (a unix socket), and for each connection the guest opens on its
 * 127.0.0.1:11434 it looks up the model's runner afresh (so a runner restarted since is found) and
 * carries the bytes:
 *
 * - `off`: as they are, to the runner's port;
 * - `local-allow` and `policy`: as HTTP, request by request. Each request's measures (never its text)
 *   are decided (`policy` with the policy file; `local-allow` allows every one), audited, and either
 *   sent on to the runner or answered 403.
 *
 * A runner found dead is started again with its recorded command line. The bridge's life is the
 * workspace's hold on the runner: it ends when the VMM does, and then lets go of the runner (which
 * stops if it is not pinned and nobody else holds it).
 */
import { Either, Option, Schema } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeHttp from "node:http"
import * as NodeNet from "node:net"
import type { Duplex } from "node:stream"
import {
  evaluateModelPolicy,
  type ModelPolicy,
  parseModelPolicy,
  requestFacts
} from "../domain/ModelPolicy.ts"
import {
  dropHolder,
  liveHolders,
  readRecord,
  recordPath,
  runnerAnswers,
  stopIfUnheld,
  tryLock,
  unlock
} from "../layers/model/RunnerFiles.ts"
import { isAlive, startTimeOf } from "../layers/process/Processes.ts"
import { RunnerRecord } from "../services/ModelRunners.ts"
import { serveChannel } from "./ChannelServer.ts"

export const BridgeConfig = Schema.Struct({
  workspace: Schema.String,
  ref: Schema.String,
  socket: Schema.String,
  vmmPid: Schema.Number,
  vmmStartTime: Schema.optional(Schema.String),
  mediation: Schema.Literal("off", "local-allow", "policy"),
  policyFile: Schema.optional(Schema.String),
  auditLog: Schema.String,
  /** The runner registry directory and the shared runner's id in it. */
  dir: Schema.String,
  runnerId: Schema.String
})
export type BridgeConfig = typeof BridgeConfig.Type

/** Request bodies larger than this are refused (413) by the mediating modes. */
const maxBody = 8 * 1024 * 1024

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

export const runBridge = (config: BridgeConfig) => {
  const audit = (event: string, fields: Record<string, unknown> = {}) => {
    try {
      NodeFs.appendFileSync(
        config.auditLog,
        JSON.stringify({
          at: new Date().toISOString(),
          event,
          workspace: config.workspace,
          model: config.ref,
          ...fields
        })
          + "\n",
        { mode: 0o600 }
      )
    } catch {
      // The audit is best effort once the workspace directory is gone.
    }
  }

  let policy: ModelPolicy | undefined
  if (config.mediation === "policy") {
    const parsed = config.policyFile === undefined
      ? Either.left("no policy file")
      : parseModelPolicy(NodeFs.readFileSync(config.policyFile, "utf8"))
    if (Either.isLeft(parsed)) {
      // Fail closed: with no readable policy, every request is denied.
      audit("policy_invalid", { reason: parsed.left })
      policy = { schema_version: "microagent.model_policy.v1", default: "deny", rules: [] }
    } else {
      policy = parsed.right
    }
  }

  // ---- the runner ----
  let lastTarget: string | undefined
  let restarting: Promise<RunnerRecord | undefined> | undefined

  /** Starts the runner again with its recorded command line on its port, and waits until it answers. */
  const restart = async (dead: RunnerRecord): Promise<RunnerRecord | undefined> => {
    while (!tryLock(config.dir, config.runnerId)) await sleep(100)
    try {
      const current = readRecord(recordPath(config.dir, config.runnerId))
      if (Option.isSome(current) && isAlive(current.value.pid, current.value.startTime)) return current.value
      const log = NodeFs.openSync(dead.log, "a", 0o600)
      const child = NodeChild.spawn(dead.command[0]!, dead.command.slice(1), {
        detached: true,
        stdio: ["ignore", log, log]
      })
      NodeFs.closeSync(log)
      child.unref()
      if (child.pid === undefined) return undefined
      const record = new RunnerRecord({
        ...dead,
        pid: child.pid,
        startTime: startTimeOf(child.pid),
        startedAt: new Date().toISOString()
      })
      NodeFs.writeFileSync(
        recordPath(config.dir, config.runnerId),
        Schema.encodeSync(Schema.parseJson(RunnerRecord))(record),
        {
          mode: 0o600
        }
      )
      audit("runner_restarted", { pid: record.pid, port: record.port })
      const deadline = Date.now() + 120_000
      while (Date.now() < deadline && isAlive(record.pid, record.startTime)) {
        if (await runnerAnswers(record.url)) return record
        await sleep(200)
      }
      return undefined
    } finally {
      unlock(config.dir, config.runnerId)
    }
  }

  /** The runner to send this connection to, started again if it died. */
  const target = async (): Promise<RunnerRecord | undefined> => {
    const record = readRecord(recordPath(config.dir, config.runnerId))
    if (Option.isNone(record)) return undefined
    let live: RunnerRecord | undefined = record.value
    if (!isAlive(live.pid, live.startTime)) {
      restarting ??= restart(live).finally(() => (restarting = undefined))
      live = await restarting
    }
    if (live === undefined) return undefined
    const where = `127.0.0.1:${live.port} pid ${live.pid}`
    if (lastTarget !== undefined && lastTarget !== where) {
      audit("upstream_target_changed", { from: lastTarget, to: where })
    }
    lastTarget = where
    return live
  }

  // ---- the mediating HTTP server (its connections are the guest's) ----
  const server = NodeHttp.createServer((request, response) => {
    const chunks: Array<Buffer> = []
    let size = 0
    let refused = false
    request.on("data", (chunk: Buffer) => {
      size += chunk.length
      if (size > maxBody) {
        if (!refused) {
          refused = true
          audit("decision", {
            method: request.method,
            path: request.url,
            decision: "deny",
            reason: "body too large"
          })
          response.writeHead(413, { "content-type": "application/json" }).end(
            JSON.stringify({
              error: { message: `request body over ${maxBody} bytes`, type: "policy_denied" }
            })
          )
        }
        return
      }
      chunks.push(chunk)
    })
    request.on("end", () => {
      if (refused) return
      const body = Buffer.concat(chunks)
      const facts = requestFacts(request.method ?? "GET", request.url ?? "/", body, {
        workspaceId: config.workspace
      })
      const decision = policy === undefined
        ? { decision: "allow" as const, reason: "local-allow" }
        : evaluateModelPolicy(policy, facts)
      const measures = {
        method: facts.method,
        path: facts.path,
        requested_model: facts.model,
        request_bytes: facts.requestBytes,
        text_bytes: facts.textBytes,
        messages: facts.messages,
        max_tokens: facts.maxTokens,
        stream: facts.stream,
        tools: facts.tools,
        decision: decision.decision,
        rule: decision.rule,
        reason: decision.reason
      }
      if (decision.decision === "deny") {
        audit("decision", { ...measures, status: 403 })
        response.writeHead(403, { "content-type": "application/json" }).end(
          JSON.stringify({
            error: { message: `denied by the model policy: ${decision.reason}`, type: "policy_denied" }
          })
        )
        return
      }
      void target().then((runner) => {
        if (runner === undefined) {
          audit("decision", { ...measures, status: 503, reason: "no runner" })
          response.writeHead(503, { "content-type": "application/json" }).end(
            JSON.stringify({ error: { message: "the model runner is not running", type: "unavailable" } })
          )
          return
        }
        const upstream = NodeHttp.request({
          host: "127.0.0.1",
          port: runner.port,
          method: request.method,
          path: request.url,
          headers: {
            ...request.headers,
            host: `127.0.0.1:${runner.port}`,
            "content-length": String(body.length)
          }
        }, (answer) => {
          let bytes = 0
          answer.on("data", (chunk: Buffer) => (bytes += chunk.length))
          answer.on(
            "end",
            () => audit("decision", { ...measures, status: answer.statusCode, response_bytes: bytes })
          )
          response.writeHead(answer.statusCode ?? 502, answer.headers)
          answer.pipe(response)
        })
        upstream.on("error", (error) => {
          audit("decision", { ...measures, status: 502, reason: `upstream: ${error.message}` })
          if (!response.headersSent) response.writeHead(502, { "content-type": "application/json" })
          response.end(JSON.stringify({ error: { message: "the model runner failed", type: "upstream" } }))
        })
        upstream.end(body)
      })
    })
  })

  // ---- the channel ----
  /** A connection of the guest: to the mediating server, or (no mediation) straight to the runner. */
  const onConnection = (guest: Duplex) => {
    if (config.mediation !== "off") {
      server.emit("connection", guest)
      return
    }
    // Paused until the runner is known: the guest's first bytes wait in the stream.
    void target().then((runner) => {
      if (runner === undefined || guest.destroyed) return guest.destroy()
      const upstream = NodeNet.connect(runner.port, "127.0.0.1")
      upstream.on("error", () => guest.destroy())
      guest.on("close", () => upstream.destroy())
      upstream.on("close", () => guest.destroy())
      guest.pipe(upstream)
      upstream.pipe(guest)
    })
  }

  let finishing = false
  /** Stopped by the host, which lets go of the runner itself. */
  const stopped = () => {
    if (finishing) return
    finishing = true
    audit("mediator_stop", { reason: "stopped by the host" })
    process.exit(0)
  }
  /**
   * The VM is gone. A halt, kill or delete lets go of the hold itself (and records it) moments later:
   * the bridge gives it three seconds, then lets go itself (the VM crashed, or its host process died).
   */
  const vmGone = async () => {
    if (finishing) return
    finishing = true
    channel?.stop()
    audit("mediator_stop", { reason: "the VM stopped" })
    const deadline = Date.now() + 3000
    while (
      Date.now() < deadline && liveHolders(config.dir, config.runnerId).some((h) => h.pid === process.pid)
    ) {
      await sleep(100)
    }
    if (dropHolder(config.dir, config.workspace, process.pid).length > 0) {
      const stoppedRunner = await stopIfUnheld(config.dir, config.runnerId)
      audit("released", { runner_stopped: stoppedRunner })
    }
    process.exit(0)
  }

  const vmmAlive = () => isAlive(config.vmmPid, config.vmmStartTime)

  audit("mediator_start", { mediation: config.mediation, pid: process.pid })
  const channel: { stop: () => void } | undefined = vmmAlive()
    ? serveChannel({
      socket: config.socket,
      vmmAlive,
      onConnection,
      onMalformed: () => audit("channel_reset", { reason: "a malformed frame from the guest" })
    })
    : undefined
  if (channel === undefined) void vmGone()
  setInterval(() => {
    if (!vmmAlive()) void vmGone()
  }, 1000)
  process.on("SIGTERM", stopped)
  process.on("SIGINT", stopped)
}

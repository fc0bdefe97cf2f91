/**
 * Model runners as detached host processes, recorded in `<state>/run/models/<id>.json` (0600) with their
 * pid, start time, port and command; their output goes to `<id>.log` beside it.
 *
 * `serve`: a live, answering runner of the model is returned as it is; a dead one is dropped; otherwise
 * the runner is chosen (`custom` with the user's template; else `llama-server` from
 * `MICROAGENT_LLAMA_SERVER` or the PATH; else the embedded runner, bin/microagent-model-runner.mjs on
 * node-llama-cpp), started on a free loopback port, and probed with `GET /v1/models` until it answers
 * (a runner that exits or does not answer in time is ended and reported with its log's tail).
 */
import { Duration, Effect, Layer, Option, Schedule, Schema } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeNet from "node:net"
import * as NodePath from "node:path"
import { NotFound, Permanent, Transient } from "../../domain/Errors.ts"
import { canonicalModelRef, parseModelRef } from "../../domain/ModelRef.ts"
import { Home } from "../../services/Home.ts"
import {
  ModelRunners,
  type ModelRunnersShape,
  type Released,
  RunnerRecord,
  type ServeOptions
} from "../../services/ModelRunners.ts"
import { Models } from "../../services/Models.ts"
import { installedFile, onPath } from "../process/Installed.ts"
import { isAlive, signal, startTimeOf } from "../process/Processes.ts"
import {
  addHolder,
  dropHolder,
  endProcess,
  liveHolders,
  readRecord,
  recordPath,
  removeRunnerFiles,
  runnerAnswers,
  runnerId,
  runnerIds,
  runnersDir,
  stopIfUnheld,
  tryLock,
  unlock
} from "./RunnerFiles.ts"

const encodeRecord = Schema.encodeSync(Schema.parseJson(RunnerRecord))

/** `$MICROAGENT_MODEL_BRIDGE_SCRIPT`, else the bundle beside this module or in an ancestor's bin/. */
const bridgeScript = (): string | undefined =>
  installedFile("MICROAGENT_MODEL_BRIDGE_SCRIPT", [
    "microagent-model-bridge.mjs",
    "bin/microagent-model-bridge.mjs"
  ])

/** How long a starting runner has to answer (loading a large model from a cold disk takes a while). */
const readyTimeoutMs = 120_000

/** `$MICROAGENT_MODEL_RUNNER_SCRIPT`, else the bundle beside this module or in an ancestor's bin/. */
const embeddedScript = (): string | undefined =>
  installedFile("MICROAGENT_MODEL_RUNNER_SCRIPT", [
    "microagent-model-runner.mjs",
    "bin/microagent-model-runner.mjs"
  ])

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = NodeNet.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as NodeNet.AddressInfo).port
      server.close(() => resolve(port))
    })
  })

/** Splits a command template on whitespace, honouring single and double quotes. */
const splitCommand = (template: string): Array<string> => {
  const words: Array<string> = []
  let current = ""
  let quote: string | undefined
  let started = false
  for (const char of template) {
    if (quote !== undefined) {
      if (char === quote) quote = undefined
      else current += char
    } else if (char === "'" || char === '"') {
      quote = char
      started = true
    } else if (/\s/.test(char)) {
      if (started) words.push(current)
      current = ""
      started = false
    } else {
      current += char
      started = true
    }
  }
  if (started) words.push(current)
  return words
}

const tailOf = (path: string) => {
  try {
    return NodeFs.readFileSync(path, "utf8").trim().split("\n").slice(-5).join("\n")
  } catch {
    return ""
  }
}

export const layer = Layer.effect(
  ModelRunners,
  Effect.gen(function*() {
    const home = yield* Home
    const models = yield* Models
    const dir = runnersDir(home.root)

    const io = <A>(what: string, f: () => A) =>
      Effect.try({
        try: f,
        catch: (cause) =>
          new Permanent({ message: `${what}: ${cause instanceof Error ? cause.message : String(cause)}` })
      })

    /** The record of a live runner; a dead runner's files are removed. */
    const live = (id: string): Option.Option<RunnerRecord> => {
      const record = readRecord(recordPath(dir, id))
      if (Option.isNone(record)) return record
      if (isAlive(record.value.pid, record.value.startTime)) return record
      removeRunnerFiles(dir, id)
      return Option.none()
    }

    const commandFor = (
      modelPath: string,
      ref: string,
      port: number,
      options: ServeOptions
    ): Effect.Effect<
      { readonly kind: RunnerRecord["runner"]; readonly argv: Array<string> },
      Permanent
    > => {
      const extra = [...(options.runnerArgs ?? [])]
      const context = String(options.contextSize ?? 4096)
      if (options.runner === "custom") {
        if (options.runnerCommand === undefined || options.runnerCommand.trim() === "") {
          return Effect.fail(
            new Permanent({
              message: "--runner custom needs --runner-command TEMPLATE",
              remediation: "e.g. --runner-command 'llama-server -m {model} --port {port}'"
            })
          )
        }
        const argv = splitCommand(options.runnerCommand).map((word) =>
          word.replaceAll("{model}", modelPath).replaceAll("{port}", String(port)).replaceAll(
            "{host}",
            "127.0.0.1"
          )
            .replaceAll("{ref}", ref)
        )
        return Effect.succeed({ kind: "custom", argv: [...argv, ...extra] })
      }
      const server = process.env.MICROAGENT_LLAMA_SERVER || onPath("llama-server")
      if (server !== undefined) {
        return Effect.succeed({
          kind: "llama-server",
          argv: [
            server,
            "-m",
            modelPath,
            "--host",
            "127.0.0.1",
            "--port",
            String(port),
            "-c",
            context,
            ...extra
          ]
        })
      }
      const script = embeddedScript()
      if (script === undefined) {
        return Effect.fail(
          new Permanent({
            message: "no model runner: llama-server is not installed and the embedded runner is missing",
            remediation:
              "install llama.cpp's llama-server (or set MICROAGENT_LLAMA_SERVER), or use --runner custom"
          })
        )
      }
      return Effect.succeed({
        kind: "embedded",
        argv: [
          process.execPath,
          script,
          "--model",
          modelPath,
          "--id",
          ref,
          "--port",
          String(port),
          "--ctx",
          context,
          ...extra
        ]
      })
    }

    const stopProcess = (record: RunnerRecord) =>
      Effect.gen(function*() {
        signal(record.pid, "SIGTERM")
        const gone = yield* Effect.sync(() => !isAlive(record.pid, record.startTime)).pipe(
          Effect.repeat({
            schedule: Schedule.spaced(Duration.millis(100)),
            until: (dead) => dead,
            times: 50
          })
        )
        if (!gone) signal(record.pid, "SIGKILL")
      })

    /**
     * The model's runner: a live, answering one is returned (pinned if `pinned`); otherwise one is
     * started. A dedicated runner is always a new one.
     */
    const ensure = Effect.fn("ModelRunners.ensure")(
      function*(ref: string, options: ServeOptions, pinned: boolean) {
        const model = yield* models.inspect(ref)
        yield* home.ensureDir(dir)
        const dedicated = options.dedicated === true
        const id = runnerId(model.ref, dedicated)
        const path = recordPath(dir, id)
        const existing = dedicated ? Option.none() : live(id)
        if (Option.isSome(existing)) {
          if (yield* Effect.promise(() => runnerAnswers(existing.value.url))) {
            if (!pinned || existing.value.pinned) return existing.value
            const repinned = new RunnerRecord({ ...existing.value, pinned: true })
            yield* io(
              "recording the model runner",
              () => NodeFs.writeFileSync(path, encodeRecord(repinned), { mode: 0o600 })
            )
            return repinned
          }
          // Alive but not answering: replace it.
          yield* stopProcess(existing.value)
          NodeFs.rmSync(path, { force: true })
        }
        const port = options.port ?? (yield* Effect.promise(freePort))
        const { argv, kind } = yield* commandFor(model.path, model.ref, port, options)
        const log = NodePath.join(dir, `${id}.log`)
        const child = yield* io(`starting the model runner ${argv[0]}`, () => {
          const fd = NodeFs.openSync(log, "w", 0o600)
          try {
            const spawned = NodeChild.spawn(argv[0]!, argv.slice(1), {
              detached: true,
              stdio: ["ignore", fd, fd]
            })
            spawned.unref()
            return spawned
          } finally {
            NodeFs.closeSync(fd)
          }
        })
        const pid = yield* Effect.async<number, Permanent>((resume) => {
          if (child.pid !== undefined) {
            return resume(Effect.succeed(child.pid))
          }
          child.once(
            "error",
            (error) =>
              resume(
                Effect.fail(
                  new Permanent({ message: `cannot start the model runner ${argv[0]}: ${error.message}` })
                )
              )
          )
        })
        const record = new RunnerRecord({
          ref: model.ref,
          digest: model.digest,
          runner: kind,
          pid,
          startTime: startTimeOf(pid),
          port,
          url: `http://127.0.0.1:${port}/v1`,
          command: argv,
          pinned,
          dedicated,
          startedAt: new Date().toISOString(),
          log
        })
        yield* io(
          "recording the model runner",
          () => NodeFs.writeFileSync(path, encodeRecord(record), { mode: 0o600 })
        )
        // Interrupted before the runner answers (Ctrl-C on `model serve`): the runner goes too.
        return yield* Effect.onInterrupt(
          waitReady(record, path, log),
          () =>
            stopProcess(record).pipe(Effect.zipRight(Effect.sync(() => NodeFs.rmSync(path, { force: true }))))
        )
      }
    )

    const waitReady = (record: RunnerRecord, path: string, log: string) =>
      Effect.gen(function*() {
        const pid = record.pid
        const deadline = Date.now() + readyTimeoutMs
        for (;;) {
          if (yield* Effect.promise(() => runnerAnswers(record.url))) return record
          const exited = !isAlive(pid, record.startTime)
          if (exited || Date.now() > deadline) {
            yield* stopProcess(record)
            NodeFs.rmSync(path, { force: true })
            const tail = tailOf(log)
            return yield* Effect.fail(
              exited
                ? new Permanent({
                  message: `the model runner for ${record.ref} exited before it answered${
                    tail === "" ? "" : `:\n${tail}`
                  }`,
                  remediation: `its output is in ${log}`
                })
                : new Transient({
                  message: `the model runner for ${record.ref} did not answer within ${
                    readyTimeoutMs / 1000
                  } s`,
                  remediation: `its output is in ${log}; serve again once the host is less busy`
                })
            )
          }
          yield* Effect.sleep(Duration.millis(200))
        }
      })

    /**
     * One start of a model's shared runner at a time, across processes: a lock file holding the
     * locker's pid (a lock whose process is gone is taken over).
     */
    const locked = <A, E, R>(ref: string, effect: Effect.Effect<A, E, R>) => {
      const id = runnerId(ref)
      const acquire = Effect.sync(() => tryLock(dir, id)).pipe(
        Effect.repeat({ schedule: Schedule.spaced(Duration.millis(100)), until: (taken) => taken })
      )
      return Effect.acquireUseRelease(acquire, () => effect, () => Effect.sync(() => unlock(dir, id)))
    }

    const serve: ModelRunnersShape["serve"] = (ref, options = {}) =>
      options.dedicated === true ? ensure(ref, options, true) : locked(ref, ensure(ref, options, true))
    const ensureShared: ModelRunnersShape["ensureShared"] = (ref, options = {}) =>
      locked(ref, ensure(ref, { ...options, dedicated: false }, false))

    const withHolders = (id: string, record: RunnerRecord) =>
      new RunnerRecord({ ...record, holders: liveHolders(dir, id).map((h) => h.workspace) })

    const stop: ModelRunnersShape["stop"] = Effect.fn("ModelRunners.stop")(function*(ref) {
      // By the canonical reference, so a runner of a model deleted since is still found.
      const wanted = canonicalModelRef(yield* parseModelRef(ref))
      const found = runnerIds(dir).flatMap((id) => {
        const record = live(id)
        return Option.isSome(record) && record.value.ref === wanted
          ? [{ id, record: withHolders(id, record.value) }]
          : []
      })
      if (found.length === 0) {
        return yield* Effect.fail(
          new NotFound({
            message: `no runner serves ${wanted}`,
            remediation: "`microagent model runners` lists the running ones"
          })
        )
      }
      for (const { id, record } of found) {
        yield* stopProcess(record)
        yield* io("removing the runner's record", () => removeRunnerFiles(dir, id))
      }
      return found[0]!.record
    })

    const list: ModelRunnersShape["list"] = Effect.sync(() =>
      runnerIds(dir).flatMap((id) => {
        const record = live(id)
        return Option.isSome(record) ? [withHolders(id, record.value)] : []
      }).sort((a, b) => a.ref.localeCompare(b.ref))
    ).pipe(Effect.withSpan("ModelRunners.list"))

    const attach: ModelRunnersShape["attach"] = Effect.fn("ModelRunners.attach")(function*(options) {
      const script = bridgeScript()
      if (script === undefined) {
        return yield* new Permanent({
          message: "the model bridge (microagent-model-bridge.mjs) is missing",
          remediation: "reinstall microagent, or set MICROAGENT_MODEL_BRIDGE_SCRIPT"
        })
      }
      const id = runnerId(options.ref)
      // An earlier session's hold (its bridge gone or going) is replaced.
      yield* release(options.workspace)
      const log = NodePath.join(NodePath.dirname(options.auditLog), "model-bridge.log")
      const child = yield* io("starting the model bridge", () => {
        const fd = NodeFs.openSync(log, "a", 0o600)
        try {
          const spawned = NodeChild.spawn(
            process.execPath,
            [script, JSON.stringify({ ...options, dir, runnerId: id })],
            { detached: true, stdio: ["ignore", fd, fd] }
          )
          spawned.unref()
          return spawned
        } finally {
          NodeFs.closeSync(fd)
        }
      })
      const pid = child.pid
      if (pid === undefined) {
        return yield* new Permanent({ message: "the model bridge did not start", remediation: `see ${log}` })
      }
      yield* io("recording the workspace's hold on its model runner", () =>
        addHolder(dir, id, {
          workspace: options.workspace,
          pid,
          startTime: startTimeOf(pid),
          since: new Date().toISOString()
        }))
      return { bridgePid: pid }
    })

    const release: ModelRunnersShape["release"] = Effect.fn("ModelRunners.release")(
      function*(workspace, ref) {
        const dropped = dropHolder(dir, workspace)
        if (dropped.length === 0 && ref !== undefined) {
          const id = runnerId(ref)
          const record = readRecord(recordPath(dir, id))
          const stopped = yield* Effect.promise(() => stopIfUnheld(dir, id))
          return Option.isSome(record) && stopped
            ? [{ ref: record.value.ref, pid: record.value.pid, stopped }]
            : []
        }
        const released: Array<Released> = []
        for (const { holder, id } of dropped) {
          yield* Effect.promise(() => endProcess(holder.pid, holder.startTime, 2000))
          const record = readRecord(recordPath(dir, id))
          const stopped = yield* Effect.promise(() => stopIfUnheld(dir, id))
          if (Option.isSome(record)) released.push({ ref: record.value.ref, pid: record.value.pid, stopped })
        }
        return released
      }
    )

    return ModelRunners.of({ serve, stop, list, ensureShared, attach, release })
  })
)

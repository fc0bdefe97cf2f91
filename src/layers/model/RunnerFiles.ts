/**
 * The runner registry on disk, shared by the host's ModelRunners layer and the model bridge process:
 *
 * - `<state>/run/models/<id>.json` (0600): a runner's record; `<id>.log` its output.
 * - `<state>/run/models/<id>.holders/<workspace>.json` (0600): a workspace holding the runner, with
 *   the pid of its model bridge. A holder whose bridge is gone no longer counts (the VM stopped, or
 *   its host process was killed), so holds are released however a workspace ends.
 *
 * A runner that is not pinned (started for workspaces, not by `model serve`) stops when its last
 * holder lets go.
 */
import { Option, Schema } from "effect"
import { createHash, randomBytes } from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodeHttp from "node:http"
import * as NodePath from "node:path"
import { RunnerRecord } from "../../services/ModelRunners.ts"
import { isAlive, releasePidLock, signal, tryPidLock } from "../process/Processes.ts"

const decodeRecord = Schema.decodeUnknownOption(Schema.parseJson(RunnerRecord))

export const HolderRecord = Schema.Struct({
  workspace: Schema.String,
  /** The model bridge serving the workspace; the hold lasts as long as it does. */
  pid: Schema.Number,
  startTime: Schema.optional(Schema.String),
  since: Schema.String
})
export type HolderRecord = typeof HolderRecord.Type
const decodeHolder = Schema.decodeUnknownOption(Schema.parseJson(HolderRecord))

export const runnersDir = (root: string) => NodePath.join(root, "run", "models")

/** The shared runner of a model is named by its reference; a dedicated one gets a name of its own. */
export const runnerId = (ref: string, dedicated = false) =>
  createHash("sha256").update(dedicated ? `${ref}#${randomBytes(8).toString("hex")}` : ref).digest("hex")
    .slice(0, 16)

export const recordPath = (dir: string, id: string) => NodePath.join(dir, `${id}.json`)
const holdersDir = (dir: string, id: string) => NodePath.join(dir, `${id}.holders`)

export const readRecord = (path: string): Option.Option<RunnerRecord> => {
  try {
    return decodeRecord(NodeFs.readFileSync(path, "utf8"))
  } catch {
    return Option.none()
  }
}

/** The ids of every recorded runner. */
export const runnerIds = (dir: string): Array<string> => {
  try {
    return NodeFs.readdirSync(dir).filter((n) => n.endsWith(".json")).map((n) => n.slice(0, -5))
  } catch {
    return []
  }
}

/** The runner's holders whose bridge still runs; the others' files are removed. */
export const liveHolders = (dir: string, id: string): Array<HolderRecord> => {
  const holders = holdersDir(dir, id)
  let names: Array<string>
  try {
    names = NodeFs.readdirSync(holders)
  } catch {
    return []
  }
  return names.flatMap((name) => {
    const path = NodePath.join(holders, name)
    let text = ""
    try {
      text = NodeFs.readFileSync(path, "utf8")
    } catch {
      return []
    }
    const holder = decodeHolder(text)
    if (Option.isSome(holder) && isAlive(holder.value.pid, holder.value.startTime)) return [holder.value]
    NodeFs.rmSync(path, { force: true })
    return []
  }).sort((a, b) => a.workspace.localeCompare(b.workspace))
}

export const addHolder = (dir: string, id: string, holder: HolderRecord) => {
  const holders = holdersDir(dir, id)
  NodeFs.mkdirSync(holders, { recursive: true, mode: 0o700 })
  const path = NodePath.join(holders, `${holder.workspace}.json`)
  const temporary = `${path}.${process.pid}.tmp`
  NodeFs.writeFileSync(temporary, JSON.stringify(holder), { mode: 0o600 })
  NodeFs.renameSync(temporary, path)
}

/**
 * Drops the workspace's holds, or only the one whose bridge is `pid`. Returns the runners it held and
 * the holder records removed (whose bridges the caller may end).
 */
export const dropHolder = (
  dir: string,
  workspace: string,
  pid?: number
): Array<{ readonly id: string; readonly holder: HolderRecord }> =>
  runnerIds(dir).flatMap((id) => {
    const path = NodePath.join(holdersDir(dir, id), `${workspace}.json`)
    let text: string
    try {
      text = NodeFs.readFileSync(path, "utf8")
    } catch {
      return []
    }
    const holder = decodeHolder(text)
    if (Option.isNone(holder) || (pid !== undefined && holder.value.pid !== pid)) return []
    NodeFs.rmSync(path, { force: true })
    return [{ id, holder: holder.value }]
  })

/** Ends a process: SIGTERM, then SIGKILL if it is still there after `graceMs`. */
export const endProcess = async (pid: number, startTime: string | undefined, graceMs = 5000) => {
  signal(pid, "SIGTERM")
  const deadline = Date.now() + graceMs
  while (isAlive(pid, startTime)) {
    if (Date.now() > deadline) {
      signal(pid, "SIGKILL")
      return
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

/**
 * Stops the runner if it is not pinned and nobody holds it any more; says whether it stopped it. Its
 * record goes first, so that no new holder picks a runner about to end.
 */
export const stopIfUnheld = async (dir: string, id: string): Promise<boolean> => {
  const path = recordPath(dir, id)
  const record = readRecord(path)
  if (Option.isNone(record) || record.value.pinned || liveHolders(dir, id).length > 0) return false
  NodeFs.rmSync(path, { force: true })
  NodeFs.rmSync(holdersDir(dir, id), { recursive: true, force: true })
  await endProcess(record.value.pid, record.value.startTime)
  return true
}

export const removeRunnerFiles = (dir: string, id: string) => {
  NodeFs.rmSync(recordPath(dir, id), { force: true })
  NodeFs.rmSync(holdersDir(dir, id), { recursive: true, force: true })
}

/** The runner's start lock (one start of a shared runner at a time, across processes); see tryPidLock. */
export const tryLock = (dir: string, id: string): boolean => {
  NodeFs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  return tryPidLock(NodePath.join(dir, `${id}.lock`))
}

export const unlock = (dir: string, id: string) => releasePidLock(NodePath.join(dir, `${id}.lock`))

/** Whether the runner at this OpenAI base URL answers `GET url/models` with 200 within two seconds. */
export const runnerAnswers = (url: string): Promise<boolean> =>
  new Promise((resolve) => {
    const request = NodeHttp.get(`${url}/models`, { timeout: 2000 }, (response) => {
      response.resume()
      resolve(response.statusCode === 200)
    })
    request.once("timeout", () => request.destroy())
    request.once("error", () => resolve(false))
  })

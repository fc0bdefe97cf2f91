/**
 * Choosing a runner for a new workspace: by capacity and labels, not by hash.
 *
 * The candidates are the live runners whose labels satisfy every constraint and whose declared
 * capacity has room for the workspace (memory, vCPUs, one more workspace). From those, `sample` are
 * drawn at random and ranked by score; the others follow, ranked too, as fallbacks for when a runner
 * refuses (it measures its own load at the moment it accepts, which a client sees only as of the last
 * heartbeat). Sampling a few instead of always taking the best spreads simultaneous placements by
 * clients that read the same heartbeats (they would all pick the same "best" runner), and it costs
 * nothing in quality once a few are compared ("the power of d choices").
 *
 * The score prefers room and a warm cache: the free share of memory and of vCPUs after placement, minus
 * the share of the workspace budget in use, plus a bonus when the runner already holds the image (no
 * pull, no conversion to ext4).
 */
import { Effect, Either } from "effect"
import { InvalidInput } from "./Errors.ts"
import { defaultCpus, defaultResources, type ProfileName, profiles } from "./Workspace.ts"

export interface Resources {
  readonly memoryMiB: number
  readonly cpus: number
  readonly workspaces: number
}

export interface Candidate {
  readonly id: string
  readonly alive: boolean
  readonly labels: Readonly<Record<string, string>>
  readonly capacity: Resources
  readonly load: Resources
  readonly images: ReadonlyArray<string>
}

export interface Demand {
  readonly memoryMiB: number
  readonly cpus: number
  readonly image: string
  readonly constraints: Readonly<Record<string, string>>
}

export const cachedImageBonus = 0.5

/** How long a silent runner keeps its shards and its workspaces before they read `lost`. */
export const defaultLockExpiryMs = 30_000

/** How long a runner with no workspace may stay silent before the cluster forgets it: a day. */
export const defaultForgetAfterSeconds = 86_400

/** A URL with its password hidden. */
export const redact = (url: string) => url.replace(/\/\/([^:/@]+):[^@/]*@/, "//$1:***@")

const share = (used: number, total: number) => (total <= 0 ? 1 : Math.min(1, Math.max(0, used / total)))

/** Why a runner cannot take the workspace, or undefined when it can. */
export const refusal = (candidate: Candidate, demand: Demand): string | undefined => {
  if (!candidate.alive) return "not heart-beating"
  for (const [key, value] of Object.entries(demand.constraints)) {
    if (candidate.labels[key] !== value) {
      return `label ${key}=${candidate.labels[key] ?? "(none)"}, not ${value}`
    }
  }
  const { capacity, load } = candidate
  if (load.workspaces + 1 > capacity.workspaces) {
    return `full: ${load.workspaces} of ${capacity.workspaces} workspaces`
  }
  if (load.memoryMiB + demand.memoryMiB > capacity.memoryMiB) {
    return `full: ${load.memoryMiB} + ${demand.memoryMiB} MiB of ${capacity.memoryMiB} MiB memory`
  }
  if (load.cpus + demand.cpus > capacity.cpus) {
    return `full: ${load.cpus} + ${demand.cpus} of ${capacity.cpus} vCPUs`
  }
  return undefined
}

export const holdsImage = (candidate: Candidate, image: string) =>
  candidate.images.includes(image) || candidate.images.includes(`${image}:latest`)
  || candidate.images.some((ref) => ref.endsWith(`/${image}`) || ref.endsWith(`/${image}:latest`))

export const score = (candidate: Candidate, demand: Demand) => {
  const { capacity, load } = candidate
  const freeMemory = 1 - share(load.memoryMiB + demand.memoryMiB, capacity.memoryMiB)
  const freeCpus = 1 - share(load.cpus + demand.cpus, capacity.cpus)
  const busy = Number.isFinite(capacity.workspaces) ? share(load.workspaces, capacity.workspaces) : 0
  return freeMemory + freeCpus - busy + (holdsImage(candidate, demand.image) ? cachedImageBonus : 0)
}

export interface Placement {
  /** The runners to try, in order. */
  readonly order: ReadonlyArray<string>
  /** The runners left out, with why. */
  readonly refused: ReadonlyArray<{ readonly id: string; readonly reason: string }>
}

/** `random` returns a float in [0, 1), as Math.random does (tests pass their own). */
export const place = (
  candidates: ReadonlyArray<Candidate>,
  demand: Demand,
  options: { readonly sample: number; readonly random: () => number }
): Placement => {
  const refused: Array<{ id: string; reason: string }> = []
  const feasible: Array<Candidate> = []
  for (const candidate of candidates) {
    const reason = refusal(candidate, demand)
    if (reason === undefined) feasible.push(candidate)
    else refused.push({ id: candidate.id, reason })
  }
  // A partial Fisher-Yates shuffle draws the sample.
  const pool = [...feasible]
  const drawn = Math.min(Math.max(1, options.sample), pool.length)
  for (let i = 0; i < drawn; i++) {
    const j = i + Math.floor(options.random() * (pool.length - i))
    ;[pool[i], pool[j]] = [pool[j]!, pool[i]!]
  }
  const byScore = (a: Candidate, b: Candidate) => score(b, demand) - score(a, demand)
  // Equal scores keep the order they were drawn in (the sort is stable): ties go to chance, not to a
  // name, so equal runners share the placements.
  const sampled = pool.slice(0, drawn).sort(byScore)
  const rest = pool.slice(drawn).sort((a, b) => byScore(a, b) || a.id.localeCompare(b.id))
  return { order: [...sampled, ...rest].map((candidate) => candidate.id), refused }
}

/**
 * The vCPUs placement counts for a workspace that names none: `MICROAGENT_DEFAULT_CPUS` where it is
 * valid (the runner's runtime refuses the create where it is not), else 2.
 */
export const placementDefaultCpus = Effect.orElseSucceed(defaultCpus, () => defaultResources.cpus)

/** Memory and vCPUs a create or run request asks for: its own figures, its profile's, or the defaults. */
export const demandOf = (
  request: {
    readonly memoryMiB?: number | undefined
    readonly cpus?: number | undefined
    readonly profile?: ProfileName | undefined
  },
  /** The vCPUs of a workspace that names none (`defaultCpus`). */
  fallbackCpus: number = defaultResources.cpus
) => ({
  memoryMiB: request.memoryMiB
    ?? (request.profile ? profiles[request.profile].memoryMiB : defaultResources.memoryMiB),
  cpus: request.cpus ?? (request.profile ? profiles[request.profile].cpus : fallbackCpus)
})

const labelPattern = /^[a-z0-9][a-z0-9._-]{0,62}$/i

/** `k=v,k=v` (labels of a runner, or the constraints of a placement). */
export const parseLabels = (
  text: string,
  flag: string
): Either.Either<Record<string, string>, InvalidInput> => {
  const labels: Record<string, string> = {}
  for (const pair of text.split(",").filter((part) => part !== "")) {
    const at = pair.indexOf("=")
    const key = pair.slice(0, at)
    const value = pair.slice(at + 1)
    if (at <= 0 || !labelPattern.test(key) || !labelPattern.test(value)) {
      return Either.left(
        new InvalidInput({
          message: `${flag}: "${pair}" is not KEY=VALUE`,
          remediation: `for example ${flag} backend=qemu,zone=a (letters, digits, dots, dashes, underscores)`
        })
      )
    }
    labels[key] = value
  }
  return Either.right(labels)
}

/** `memory=MiB,cpus=N,workspaces=N`, any of them. */
export const parseCapacity = (text: string): Either.Either<Partial<Resources>, InvalidInput> => {
  const capacity: { memoryMiB?: number; cpus?: number; workspaces?: number } = {}
  const keys: Record<string, "memoryMiB" | "cpus" | "workspaces"> = {
    memory: "memoryMiB",
    cpus: "cpus",
    workspaces: "workspaces"
  }
  for (const pair of text.split(",").filter((part) => part !== "")) {
    const [key = "", value = ""] = pair.split("=")
    const field = keys[key]
    const number = /^\d{1,9}$/.test(value) ? Number(value) : Number.NaN
    if (field === undefined || !Number.isSafeInteger(number)) {
      return Either.left(
        new InvalidInput({
          message: `--capacity: "${pair}" is not memory=MiB, cpus=N or workspaces=N`,
          remediation: "for example --capacity memory=8192,cpus=8,workspaces=20"
        })
      )
    }
    capacity[field] = number
  }
  return Either.right(capacity)
}

/** `HOST:PORT` (an IPv4 address or a name; port 1-65535). */
export const parseHostPort = (
  text: string,
  flag: string
): Either.Either<{ readonly host: string; readonly port: number }, InvalidInput> => {
  const match = /^([A-Za-z0-9.-]+):(\d{1,5})$/.exec(text)
  const port = match ? Number(match[2]) : 0
  return match && port >= 1 && port <= 65535
    ? Either.right({ host: match[1]!, port })
    : Either.left(
      new InvalidInput({
        message: `${flag}: "${text}" is not HOST:PORT`,
        remediation: `for example ${flag} 10.0.0.5:7400`
      })
    )
}

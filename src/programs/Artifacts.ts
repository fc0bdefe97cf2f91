/**
 * Declared outputs (`--output NAME=/guest/path`) and their artifacts. `run` collects every declared
 * output after its command exits and before the workspace is torn down, into
 * `<state>/artifacts/<workspace>/`, so `artifacts get` works after the workspace is gone. Like the rest of
 * the state directory, what is kept there is 0600 (directories 0700); the guest's permission bits
 * (without set-id) are kept beside, in `modes/<output>.json`, and given back by `artifacts get`. A collection stays until `artifacts rm`; deleting the workspace does not remove it, because `run`
 * deletes its workspace itself.
 */
import { Effect, Option, Schema } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { InvalidInput, NotFound, Permanent } from "../domain/Errors.ts"
import { type CollectedOutput, Manifest } from "../domain/Files.ts"
import { nameProblem } from "../domain/Workspace.ts"
import { Home } from "../services/Home.ts"
import { HostTrees, type HostTreesShape } from "../services/HostTrees.ts"
import { StateStore } from "../services/StateStore.ts"
import { copyOut } from "./Cp.ts"
import { extractHostTree, hostDestination, writeHostFile } from "./internal/HostWrite.ts"

const artifactsRoot = (root: string) => NodePath.join(root, "artifacts")

/** The collection directory of a workspace name; a name that is not one (`..`, `a/b`) never reaches the disk. */
const collectionDir = (root: string, name: string) => {
  const problem = nameProblem(name)
  return problem === undefined
    ? Effect.succeed(NodePath.join(artifactsRoot(root), name))
    : Effect.fail(
      new InvalidInput({
        message: `invalid workspace name: ${problem}`,
        remediation: "see `microagent list`"
      })
    )
}

const io = <A>(what: string, f: () => A) =>
  Effect.try({
    try: f,
    catch: (cause) =>
      new Permanent({
        message: `${what}: ${String(cause)}`,
        remediation: "check the state directory's permissions"
      })
  })

/** Permission bits by path relative to an output's top ("" for the top itself). */
type Modes = Record<string, number>

/** Records the modes of a collected output and makes it private: files 0600, directories 0700. */
const privatize = (trees: HostTreesShape, top: string): Modes => {
  const modes: Modes = {}
  for (const entry of trees.walk(top, "x").entries) {
    if (entry.type === "symlink") continue
    modes[NodePath.relative(top, entry.source)] = entry.mode
    NodeFs.chmodSync(entry.source, entry.type === "directory" ? 0o700 : 0o600)
  }
  return modes
}

const readModes = (dir: string, artifact: string): Modes => {
  try {
    return JSON.parse(NodeFs.readFileSync(NodePath.join(dir, "modes", `${artifact}.json`), "utf8")) as Modes
  } catch {
    return {}
  }
}

const readManifest = (dir: string) =>
  io(`cannot read ${dir}/manifest.json`, () => {
    const text = NodeFs.readFileSync(NodePath.join(dir, "manifest.json"), { encoding: "utf8", flag: "r" })
    return Option.some(Schema.decodeUnknownSync(Manifest)(JSON.parse(text)))
  }).pipe(Effect.catchAll(() => Effect.succeed(Option.none<Manifest>())))

/** Copies every declared output of a running workspace into its collection, replacing an older one. */
export const collectOutputs = Effect.fn("artifacts.collect")(function*(name: string) {
  const home = yield* Home
  const trees = yield* HostTrees
  const store = yield* StateStore
  const workspace = yield* store.get(name)
  const final = yield* collectionDir(home.root, name)
  const root = yield* home.ensureDir(artifactsRoot(home.root))
  const staging = yield* home.ensureDir(
    NodePath.join(root, `.collecting-${name}-${process.pid}-${Date.now().toString(36)}`)
  )
  const files = yield* home.ensureDir(NodePath.join(staging, "files"))
  const modes = yield* home.ensureDir(NodePath.join(staging, "modes"))
  return yield* Effect.gen(function*() {
    const outputs: Array<CollectedOutput> = []
    for (const output of workspace.outputs) {
      const top = NodePath.join(files, output.name)
      const copied = yield* Effect.either(
        copyOut(name, output.path, top).pipe(
          Effect.tap(() =>
            io(`cannot record the modes of ${output.name}`, () =>
              NodeFs.writeFileSync(
                NodePath.join(modes, `${output.name}.json`),
                JSON.stringify(privatize(trees, top)),
                { mode: 0o600 }
              ))
          )
        )
      )
      outputs.push(
        copied._tag === "Right"
          ? {
            name: output.name,
            path: output.path,
            collected: true,
            kind: copied.right.kind,
            size: copied.right.bytes
          }
          : { name: output.name, path: output.path, collected: false, error: copied.left.message }
      )
    }
    const manifest: Manifest = { workspace: name, collectedAt: new Date().toISOString(), outputs }
    yield* io("cannot record the collection", () => {
      NodeFs.writeFileSync(
        NodePath.join(staging, "manifest.json"),
        `${JSON.stringify(manifest, null, 2)}\n`,
        { mode: 0o600 }
      )
      NodeFs.rmSync(final, { recursive: true, force: true })
      NodeFs.renameSync(staging, final)
    })
    yield* store.appendEvent(name, {
      type: "artifacts",
      detail: `collected ${outputs.filter((o) => o.collected).length} of ${outputs.length} outputs`
    }).pipe(Effect.ignore)
    return manifest
  }).pipe(Effect.ensuring(Effect.sync(() => NodeFs.rmSync(staging, { recursive: true, force: true }))))
})

/** Declared outputs of a workspace (or of a collection whose workspace is gone), and what was collected. */
export const listArtifacts = Effect.fn("artifacts.list")(function*(name: string) {
  const home = yield* Home
  const store = yield* StateStore
  const dir = yield* collectionDir(home.root, name)
  const found = yield* store.find(name)
  const manifest = yield* readManifest(dir)
  if (Option.isNone(found) && Option.isNone(manifest)) {
    return yield* new NotFound({
      message: `no workspace and no collected artifacts named ${name}`,
      remediation: "see `microagent list`"
    })
  }
  const collected = Option.match(manifest, { onNone: () => [], onSome: (m) => m.outputs })
  const declared = Option.match(found, { onNone: () => collected, onSome: (w) => w.outputs })
  return {
    workspace: name,
    exists: Option.isSome(found),
    artifacts: declared.map((output) =>
      collected.find((c) => c.name === output.name && c.path === output.path)
        ?? { name: output.name, path: output.path, collected: false }
    )
  }
})

/**
 * Copies one declared output to `hostPath`: off the workspace while it exists (over the channel when it
 * runs, offline when stopped), else from its collection.
 */
export const getArtifact = Effect.fn("artifacts.get")(
  function*(name: string, artifact: string, hostPath: string) {
    const home = yield* Home
    const trees = yield* HostTrees
    const store = yield* StateStore
    const listed = yield* listArtifacts(name)
    const entry = listed.artifacts.find((a) => a.name === artifact)
    if (entry === undefined) {
      return yield* new NotFound({
        message: `workspace ${name} declares no output ${artifact}`,
        remediation: `see \`microagent artifacts ls ${name}\``
      })
    }
    if (Option.isSome(yield* store.find(name))) {
      const copied = yield* copyOut(name, entry.path, hostPath)
      return { ...copied, artifact, from: "workspace" as const }
    }
    if (!entry.collected || entry.kind === undefined) {
      return yield* new NotFound({
        message: `output ${artifact} of ${name} was not collected${entry.error ? `: ${entry.error}` : ""}`,
        remediation: "the workspace is gone; nothing else holds it"
      })
    }
    if (!NodePath.isAbsolute(hostPath)) {
      return yield* new InvalidInput({
        message: `host path ${hostPath} is not absolute`,
        remediation: "pass an absolute path"
      })
    }
    const dir = yield* collectionDir(home.root, name)
    const source = NodePath.join(dir, "files", artifact)
    const modes = readModes(dir, artifact)
    const base = NodePath.posix.basename(entry.path)
    const target = yield* hostDestination(hostPath, base, entry.kind === "directory")
    const written = entry.kind === "file"
      ? {
        entries: 1,
        bytes: yield* writeHostFile(target, (write) =>
          io(`cannot read ${source}`, () => {
            const fd = NodeFs.openSync(source, "r")
            const buffer = Buffer.allocUnsafe(1024 * 1024)
            for (let n = NodeFs.readSync(fd, buffer); n > 0; n = NodeFs.readSync(fd, buffer)) {
              write(buffer.subarray(0, n))
            }
            NodeFs.closeSync(fd)
            return modes[""] ?? NodeFs.statSync(source).mode
          }))
      }
      : yield* extractHostTree(target, base, (sink) =>
        Effect.promise(async () => {
          const tree = trees.walk(source, base)
          // The guest's modes, not the private ones the collection keeps.
          const entries = tree.entries.map((entry) => ({
            ...entry,
            mode: modes[NodePath.relative(source, entry.source)] ?? entry.mode
          }))
          for await (const chunk of trees.tar({ ...tree, entries })) sink.write(chunk)
        }))
    return {
      workspace: name,
      direction: "out" as const,
      hostPath: target,
      guestPath: entry.path,
      kind: entry.kind,
      via: "collected" as const,
      entries: written.entries,
      bytes: written.bytes,
      artifact,
      from: "collection" as const
    }
  }
)

/** Removes a workspace's collected artifacts; idempotent. */
export const removeArtifacts = Effect.fn("artifacts.remove")(function*(name: string) {
  const home = yield* Home
  const dir = yield* collectionDir(home.root, name)
  const existed = NodeFs.existsSync(dir)
  yield* io(`cannot remove ${dir}`, () => NodeFs.rmSync(dir, { recursive: true, force: true }))
  return { workspace: name, removed: existed }
})

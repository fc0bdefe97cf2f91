/**
 * The state directory (`$MICROAGENT_HOME`, default `~/.microagent`, or `--state-dir`) and its layout.
 * Directories are 0700 and files 0600; everything else in the project asks this service for paths.
 */
import { Context, Effect, Layer } from "effect"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { Permanent } from "../domain/Errors.ts"

export interface HomeShape {
  readonly root: string
  /** `state.db`: the SQLite store. */
  readonly database: string
  readonly images: string
  readonly blobs: string
  readonly kernels: string
  readonly volumes: string
  readonly workspaces: string
  /** Per-workspace durable directory (private rootfs and disks). */
  readonly workspaceDir: (name: string) => string
  /** Per-workspace runtime directory (sockets, console log, pid files); short, to fit socket paths. */
  readonly runtimeDir: (name: string) => string
  readonly runtimeSocket: string
  readonly tmp: string
  /** Creates a directory (and parents below the root) with mode 0700. */
  readonly ensureDir: (path: string) => Effect.Effect<string, Permanent>
}

export class Home extends Context.Tag("microagent/Home")<Home, HomeShape>() {
  /** `--state-dir` wins, then `$MICROAGENT_HOME`, then `~/.microagent`. */
  static readonly resolveRoot = (explicit?: string): string =>
    NodePath.resolve(
      explicit ?? process.env.MICROAGENT_HOME ?? NodePath.join(NodeOs.homedir(), ".microagent")
    )

  /** The layout of `root`, creating nothing (for read-only checks such as `doctor`). */
  static readonly layout = (root: string): HomeShape => {
    const ensureDir = (path: string) =>
      Effect.try({
        try: () => {
          NodeFs.mkdirSync(path, { recursive: true, mode: 0o700 })
          NodeFs.chmodSync(path, 0o700)
          return path
        },
        catch: (cause) =>
          new Permanent({
            message: `cannot create directory ${path}: ${String(cause)}`,
            remediation: "check that the state directory is writable, or pick another with --state-dir"
          })
      })
    return {
      root,
      database: NodePath.join(root, "state.db"),
      images: NodePath.join(root, "images"),
      blobs: NodePath.join(root, "images", "blobs"),
      kernels: NodePath.join(root, "kernels"),
      volumes: NodePath.join(root, "volumes"),
      workspaces: NodePath.join(root, "workspaces"),
      workspaceDir: (name) => NodePath.join(root, "workspaces", name),
      runtimeDir: (name) => NodePath.join(root, "run", name),
      runtimeSocket: NodePath.join(root, "run", "runtime.sock"),
      tmp: NodePath.join(root, "tmp"),
      ensureDir
    }
  }

  static readonly make = (root: string): Effect.Effect<HomeShape, Permanent> =>
    Effect.gen(function*() {
      const home = Home.layout(root)
      yield* home.ensureDir(root)
      yield* home.ensureDir(NodePath.join(root, "run"))
      yield* home.ensureDir(home.workspaces)
      yield* home.ensureDir(home.tmp)
      return home
    })

  static readonly layer = (root: string) => Layer.effect(Home, Home.make(root))
}

/**
 * A private directory (0700) under `parent`, named `<prefix><pid>-<random>`, removed with its content
 * when the scope closes: scratch space for one operation.
 */
export const scopedWorkDir = (parent: string, prefix: string) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      NodeFs.mkdirSync(parent, { recursive: true, mode: 0o700 })
      const dir = NodePath.join(
        parent,
        `${prefix}${process.pid}-${NodeCrypto.randomBytes(6).toString("hex")}`
      )
      NodeFs.mkdirSync(dir, { mode: 0o700 })
      return dir
    }),
    (dir) => Effect.sync(() => NodeFs.rmSync(dir, { recursive: true, force: true }))
  )

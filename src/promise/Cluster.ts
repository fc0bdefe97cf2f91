/**
 * A cluster for the Promise API (docs/cluster.md): workspaces on every runner, by name, from an
 * application that does not use Effect. `Cluster.connect(url)` joins as a client (it holds no VM);
 * `close()` (or `await using`) leaves.
 */
import { Effect, Exit, Layer, ManagedRuntime } from "effect"
import type * as ClusterClientModule from "../cluster/Client.ts"
import type { ExecResult } from "../domain/Exec.ts"
import type { CreateRequest, ExecSettings, RunRequest } from "../domain/Requests.ts"
import type { Workspace } from "../domain/Workspace.ts"
import type { ImageRecord } from "../services/ImageStore.ts"
import { fromCause } from "./MicroagentError.ts"

/** The cluster's modules (PostgreSQL's client among them), loaded by the first cluster opened. */
const load = Effect.promise(() => import("../cluster/Client.ts"))

export class Cluster implements AsyncDisposable {
  readonly #runtime: ManagedRuntime.ManagedRuntime<any, unknown>

  private constructor(url: string) {
    this.#runtime = ManagedRuntime.make(
      Layer.unwrapEffect(Effect.map(load, (module) => module.layer({ url })))
    )
  }

  /** A client of the cluster whose PostgreSQL is at `url` (`postgres://…`). */
  static connect(url: string): Cluster {
    return new Cluster(url)
  }

  async #run<A>(
    operation: (operations: typeof ClusterClientModule.operations) => Effect.Effect<A, unknown, any>
  ): Promise<A> {
    const exit = await this.#runtime.runPromiseExit(
      Effect.flatMap(load, (module) => operation(module.operations))
    )
    if (Exit.isSuccess(exit)) return exit.value
    throw fromCause(exit.cause)
  }

  /** Creates a workspace on a runner chosen by placement (capacity, `constraints`, cached images). */
  create(request: CreateRequest): Promise<Workspace> {
    return this.#run((operations) => operations.create(request))
  }

  run(request: RunRequest) {
    return this.#run((operations) => operations.run(request))
  }

  start(name: string): Promise<Workspace> {
    return this.#run((operations) => operations.start(name))
  }

  exec(
    name: string,
    argv: readonly [string, ...Array<string>],
    settings: ExecSettings = {}
  ): Promise<ExecResult> {
    return this.#run((operations) => operations.exec({ ...settings, name, argv }))
  }

  halt(name: string): Promise<Workspace> {
    return this.#run((operations) => operations.halt(name))
  }

  delete(name: string, options: { readonly force?: boolean } = {}) {
    return this.#run((operations) => operations.delete(name, options))
  }

  /** Every workspace of the cluster, with the runner holding each (`host`); a lost runner's read `lost`. */
  list(): Promise<ReadonlyArray<Workspace>> {
    return this.#run((operations) => operations.list)
  }

  /** Copies a host file or directory into a workspace (`in`) or out of one, by value. */
  cp(name: string, direction: "in" | "out", hostPath: string, guestPath: string) {
    return this.#run((operations) => operations.cp({ name, direction, hostPath, guestPath }))
  }

  /**
   * Pulls an image on every live runner (placement then finds it wherever a workspace lands); the
   * record is the first runner's, and one runner's failure rejects, naming it.
   */
  imagePull(
    ref: string,
    options: Omit<Parameters<typeof ClusterClientModule.operations.imagePull>[0], "ref"> = {}
  ): Promise<ImageRecord> {
    return this.#run((operations) => operations.imagePull({ ...options, ref }))
  }

  close(): Promise<void> {
    return this.#runtime.dispose()
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close()
  }
}

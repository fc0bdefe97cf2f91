/**
 * A Host is the library running in this process for the Promise API: one `ManagedRuntime` over
 * `Microagent.layer` (the state directory, its store and the backends), built on first use and shared
 * by every workspace opened through it. `Workspace.create` without a `host` uses the default Host
 * (`$MICROAGENT_HOME`, `$MICROAGENT_BACKEND`), which lives as long as the process.
 */
import { Effect, Exit, Layer, ManagedRuntime, Stream } from "effect"
import type { TemplateEntry, TemplatesPruned } from "../domain/Template.ts"
import type { Backend } from "../domain/Workspace.ts"
import { ImageStoreOnHome } from "../layers/image/Stack.ts"
import * as ModelRunnersLive from "../layers/model/ModelRunnersLive.ts"
import * as ModelsLive from "../layers/model/ModelsLive.ts"
import { RegistryHttp } from "../layers/registry/Http.ts"
import * as Microagent from "../Microagent.ts"
import {
  imagePush,
  type PushOptions,
  type PushResult,
  registryList,
  registryLogin,
  registryLogout
} from "../programs/Image.ts"
import {
  modelInspect,
  modelList,
  modelPolicyEvaluate,
  modelPolicyValidate,
  modelPrune,
  modelPull,
  modelRemove,
  modelRunners,
  modelServe,
  modelStop
} from "../programs/Model.ts"
import { listTemplates, pruneTemplates } from "../programs/Templates.ts"
import { Home } from "../services/Home.ts"
import type { RunnerRecord, ServeOptions } from "../services/ModelRunners.ts"
import type { ModelRecord, PruneResult, PullOptions } from "../services/Models.ts"
import type { RegistryLogin } from "../services/Registry.ts"
import { fromCause } from "./MicroagentError.ts"

export interface HostOptions {
  /** The state directory; default `$MICROAGENT_HOME`, else `~/.microagent`. */
  readonly home?: string | undefined
  /** The backend of new workspaces; default `$MICROAGENT_BACKEND`, else `qemu`. */
  readonly backend?: Backend | undefined
}

export class Host implements AsyncDisposable {
  readonly #runtime: ManagedRuntime.ManagedRuntime<Microagent.Services, unknown>

  private constructor(runtime: ManagedRuntime.ManagedRuntime<Microagent.Services, unknown>) {
    this.#runtime = runtime
  }

  /** The library over a state directory, on a default backend. */
  static open(options: HostOptions = {}): Host {
    return new Host(ManagedRuntime.make(Microagent.layer(options)))
  }

  /**
   * For an application's tests: the fake backend (guest commands run as host processes in the
   * workspace's directory) in a temporary state directory, removed with its fake VMMs on `close`.
   */
  static openTest(options: { readonly home?: string | undefined } = {}): Host {
    return new Host(ManagedRuntime.make(Microagent.layerTest(options)))
  }

  /** Runs a program of the library; failures reject with a `MicroagentError`. */
  async run<A, E>(
    effect: Effect.Effect<A, E, Microagent.Services>,
    options: { readonly signal?: AbortSignal | undefined } = {}
  ): Promise<A> {
    const exit = await this.#runtime.runPromiseExit(
      effect,
      options.signal === undefined ? undefined : { signal: options.signal }
    )
    if (Exit.isSuccess(exit)) return exit.value
    throw fromCause(exit.cause, options.signal)
  }

  /**
   * A stream of the library as an async iterable. Leaving the loop early (`break`, `return`, a throw)
   * interrupts the stream, which stops what feeds it (a guest command, say).
   */
  iterate<A, E>(stream: Stream.Stream<A, E, Microagent.Services>): AsyncIterable<A> {
    const runtimeOf = () => this.run(Effect.runtime<Microagent.Services>())
    return {
      async *[Symbol.asyncIterator]() {
        // Building the runtime here too, so a failure to open the state directory is a MicroagentError.
        const built = await runtimeOf()
        yield* Stream.toAsyncIterableRuntime(
          stream.pipe(Stream.catchAllCause((cause) => Stream.fail(fromCause(cause)))),
          built
        )
      }
    }
  }

  /**
   * Pushes an image of the store to a registry (its own reference, or `options.to`) with the credentials
   * pulls use. Blobs the registry has are not sent; the pushed digest is the local one.
   */
  pushImage(
    ref: string,
    options: Omit<PushOptions, "onProgress"> & { readonly signal?: AbortSignal | undefined } = {}
  ): Promise<PushResult> {
    return this.run(
      imagePush(ref, { to: options.to, insecureRegistry: options.insecureRegistry }).pipe(
        Effect.provide(Layer.merge(ImageStoreOnHome, registryOnHome))
      ),
      { signal: options.signal }
    )
  }

  /** Checks a registry credential and saves it ($REGISTRY_AUTH_FILE, else `<home>/auth.json`, 0600). */
  registryLogin(
    registry: string,
    credential: { readonly username: string; readonly password: string },
    options: { readonly insecureRegistry?: boolean | undefined } = {}
  ): Promise<{ readonly registry: string; readonly file: string }> {
    return this.run(registryLogin(registry, credential, options).pipe(Effect.provide(registryOnHome)))
  }

  /** Removes a saved registry login. */
  registryLogout(registry: string): Promise<{ readonly registry: string; readonly file: string }> {
    return this.run(registryLogout(registry).pipe(Effect.provide(registryOnHome)))
  }

  /** The saved registry logins: hosts, usernames and their files, never passwords. */
  async registryLogins(): Promise<ReadonlyArray<RegistryLogin>> {
    return (await this.run(registryList.pipe(Effect.provide(registryOnHome)))).logins
  }

  /**
   * Downloads a GGUF model (`hf.co/ORG/REPO[@REV]/FILE.gguf` or a resolve URL) from the hub
   * (`MICROAGENT_HF_ENDPOINT`, else huggingface.co), verified against its LFS sha256 while it streams;
   * nothing is recorded on a mismatch. `token` defaults to HF_TOKEN, then HUGGING_FACE_HUB_TOKEN.
   */
  pullModel(
    ref: string,
    options: PullOptions & { readonly signal?: AbortSignal | undefined } = {}
  ): Promise<ModelRecord> {
    return this.run(
      modelPull(ref, { token: options.token, onProgress: options.onProgress }).pipe(
        Effect.provide(ModelsLive.layer)
      ),
      { signal: options.signal }
    )
  }

  /** The pulled models. */
  models(): Promise<ReadonlyArray<ModelRecord>> {
    return this.run(modelList().pipe(Effect.provide(ModelsLive.layer)))
  }

  /** One pulled model, its GGUF header read again from the stored file. */
  inspectModel(ref: string): Promise<ModelRecord> {
    return this.run(modelInspect(ref).pipe(Effect.provide(ModelsLive.layer)))
  }

  /** Drops a model's record, and its file when no other record uses it. */
  removeModel(ref: string): Promise<ModelRecord> {
    return this.run(modelRemove(ref).pipe(Effect.provide(ModelsLive.layer)))
  }

  /** Removes partial downloads and model files no record uses. */
  pruneModels(): Promise<PruneResult> {
    return this.run(modelPrune().pipe(Effect.provide(ModelsLive.layer)))
  }

  /** The warm-start templates, each with whether its image and kernel are still there. */
  templates(): Promise<ReadonlyArray<TemplateEntry>> {
    return this.run(listTemplates())
  }

  /** Removes stale warm-start templates (image or kernel gone), or every one with `all`. */
  pruneTemplates(options: { readonly all?: boolean | undefined } = {}): Promise<TemplatesPruned> {
    return this.run(pruneTemplates({ all: options.all === true }))
  }

  /**
   * The runner serving a pulled model on loopback with the OpenAI-compatible API (`record.url` is the
   * base URL): started and health-probed, or the live one already serving it. It outlives the Host.
   */
  serveModel(ref: string, options: ServeOptions = {}): Promise<RunnerRecord> {
    return this.run(modelServe(ref, options).pipe(Effect.provide(runnersLayer)))
  }

  /** Stops the runner serving a model. */
  stopModel(ref: string): Promise<RunnerRecord> {
    return this.run(modelStop(ref).pipe(Effect.provide(runnersLayer)))
  }

  /** Checks a model mediation policy file (schema microagent.model_policy.v1). */
  validateModelPolicy(file: string) {
    return this.run(modelPolicyValidate(file))
  }

  /** The decision a model policy makes for a request with these measures; `expect` fails on another. */
  evaluateModelPolicy(
    file: string,
    request: Parameters<typeof modelPolicyEvaluate>[1] = {},
    expect?: "allow" | "deny"
  ) {
    return this.run(modelPolicyEvaluate(file, request, expect))
  }

  /** The live model runners. */
  modelRunners(): Promise<ReadonlyArray<RunnerRecord>> {
    return this.run(modelRunners().pipe(Effect.provide(runnersLayer)))
  }

  /** Releases the state directory's database and the backends. Workspaces keep running. */
  close(): Promise<void> {
    return this.#runtime.dispose()
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close()
  }
}

/** The registry client of the host's state directory (its auth file). */
export const registryOnHome = Layer.unwrapEffect(Effect.map(Home, (home) => RegistryHttp.layer(home.root)))

const runnersLayer = ModelRunnersLive.layer.pipe(Layer.provide(ModelsLive.layer))

let shared: Host | undefined

/** The process's default Host, opened on first use from the environment. */
export const defaultHost = (): Host => (shared ??= Host.open())

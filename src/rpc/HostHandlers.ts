/**
 * Handlers of the host-level procedures (HostRpcs.ts): thin calls into the image store, the model
 * store, the kernel cache and `doctor`. The stores and the cache are built once, on first use, for the server's state
 * directory, whatever backend its workspaces use: images and kernels are the same files for all.
 */
import { SqlClient } from "@effect/sql"
import { Effect, Layer, Redacted } from "effect"
import * as HostChecks from "../layers/host/HostChecks.ts"
import { makeImageStore } from "../layers/image/ImageStoreLive.ts"
import { FileKernelCache } from "../layers/kernel/FileKernelCache.ts"
import * as ModelRunnersLive from "../layers/model/ModelRunnersLive.ts"
import * as ModelsLive from "../layers/model/ModelsLive.ts"
import { RegistryHttp } from "../layers/registry/Http.ts"
import * as RootfsBuilderLive from "../layers/rootfs/RootfsBuilderLive.ts"
import { doctorWithState } from "../programs/Doctor.ts"
import { imagePush, registryList, registryLogin, registryLogout } from "../programs/Image.ts"
import { modelPolicyEvaluate, modelPolicyValidate } from "../programs/Model.ts"
import { backupState, checkState } from "../programs/State.ts"
import { listTemplates, pruneTemplates } from "../programs/Templates.ts"
import { Home } from "../services/Home.ts"
import { ImageStore } from "../services/ImageStore.ts"
import { KernelCache } from "../services/KernelCache.ts"
import { ModelRunners, type ServeOptions } from "../services/ModelRunners.ts"
import { Models } from "../services/Models.ts"
import { Processes } from "../services/Processes.ts"
import type { Registry } from "../services/Registry.ts"

interface PolicyEvaluatePayload {
  readonly file: string
  readonly expect?: "allow" | "deny" | undefined
  readonly method?: string | undefined
  readonly path?: string | undefined
  readonly model?: string | undefined
  readonly workspaceId?: string | undefined
  readonly capability?: string | undefined
  readonly workerId?: string | undefined
  readonly requestBytes?: number | undefined
  readonly textBytes?: number | undefined
  readonly messages?: number | undefined
  readonly maxTokens?: number | undefined
  readonly stream?: boolean | undefined
  readonly tools?: ReadonlyArray<string> | undefined
}

export const makeHostHandlers = Effect.gen(function*() {
  const home = yield* Home
  const sql = yield* SqlClient.SqlClient
  const here = Layer.mergeAll(Layer.succeed(Home, home), Layer.succeed(SqlClient.SqlClient, sql))
  const images = yield* Effect.cached(
    makeImageStore.pipe(
      Effect.provide(
        Layer.mergeAll(RegistryHttp.layer(home.root), RootfsBuilderLive.layer).pipe(Layer.provideMerge(here))
      )
    )
  )
  const registryLayer = RegistryHttp.layer(home.root)
  const withPushServices = <A, E>(effect: Effect.Effect<A, E, ImageStore | Registry | Home>) =>
    Effect.flatMap(images, (store) =>
      effect.pipe(
        Effect.provideService(ImageStore, store),
        Effect.provideService(Home, home),
        Effect.provide(registryLayer)
      ))
  const kernels = yield* Effect.cached(
    KernelCache.pipe(
      Effect.provide(FileKernelCache.layer().pipe(Layer.provide(here)))
    )
  )
  const processes = yield* Processes
  const withTemplateServices = <A, E>(
    effect: Effect.Effect<A, E, ImageStore | KernelCache | Home | Processes>
  ) =>
    Effect.flatMap(Effect.zip(images, kernels), ([store, cache]) =>
      effect.pipe(
        Effect.provideService(ImageStore, store),
        Effect.provideService(KernelCache, cache),
        Effect.provideService(Home, home),
        Effect.provideService(Processes, processes)
      ))
  const models = yield* Effect.cached(Models.pipe(Effect.provide(ModelsLive.layer.pipe(Layer.provide(here)))))
  const runners = yield* Effect.cached(
    ModelRunners.pipe(
      Effect.provide(
        ModelRunnersLive.layer.pipe(Layer.provide(Layer.effect(Models, models)), Layer.provide(here))
      )
    )
  )
  return {
    imagePull: (p: {
      readonly ref: string
      readonly platform?: string | undefined
      readonly refresh?: boolean | undefined
      readonly insecureRegistry?: boolean | undefined
      readonly allowGuestSetuid?: boolean | undefined
      readonly refuseDevices?: boolean | undefined
      readonly baselineSizeMiB?: number | undefined
    }) =>
      Effect.flatMap(images, (store) =>
        store.ensure(p.ref, {
          refresh: p.refresh ?? true,
          ...(p.platform === undefined ? {} : { platform: p.platform }),
          ...(p.insecureRegistry === undefined ? {} : { insecureRegistry: p.insecureRegistry }),
          ...(p.allowGuestSetuid === undefined ? {} : { allowGuestSetuid: p.allowGuestSetuid }),
          ...(p.refuseDevices === undefined ? {} : { refuseDevices: p.refuseDevices }),
          ...(p.baselineSizeMiB === undefined ? {} : { baselineSizeMiB: p.baselineSizeMiB })
        })),
    templateList: () => withTemplateServices(listTemplates()),
    templatePrune: (p: { readonly all?: boolean | undefined }) =>
      withTemplateServices(pruneTemplates({ all: p.all === true })),
    imageList: () => Effect.map(Effect.flatMap(images, (store) => store.list), (list) => ({ images: list })),
    imageInspect: (p: { readonly ref: string }) => Effect.flatMap(images, (store) => store.inspect(p.ref)),
    imageRemove: (p: { readonly refs: ReadonlyArray<string>; readonly purge?: boolean | undefined }) =>
      Effect.flatMap(images, (store) => store.remove(p.refs, { purge: p.purge ?? false })),
    imageTag: (p: { readonly image: string; readonly tag: string }) =>
      Effect.flatMap(images, (store) => store.tag(p.image, p.tag)),
    imagePrune: (p: { readonly purge?: boolean | undefined }) =>
      Effect.flatMap(images, (store) => store.prune({ purge: p.purge ?? false })),
    imagePush: (p: {
      readonly ref: string
      readonly to?: string | undefined
      readonly insecureRegistry?: boolean | undefined
    }) => withPushServices(imagePush(p.ref, { to: p.to, insecureRegistry: p.insecureRegistry })),
    registryLogin: (p: {
      readonly registry: string
      readonly username: string
      readonly password: Redacted.Redacted<string>
      readonly insecureRegistry?: boolean | undefined
    }) =>
      Effect.provide(
        registryLogin(p.registry, { username: p.username, password: Redacted.value(p.password) }, {
          insecureRegistry: p.insecureRegistry
        }),
        registryLayer
      ),
    registryLogout: (p: { readonly registry: string }) =>
      Effect.provide(registryLogout(p.registry), registryLayer),
    registryList: () => Effect.provide(registryList, registryLayer),
    modelPull: (p: { readonly ref: string; readonly token?: Redacted.Redacted<string> | undefined }) =>
      Effect.flatMap(
        models,
        (store) => store.pull(p.ref, { token: p.token === undefined ? undefined : Redacted.value(p.token) })
      ),
    modelList: () => Effect.map(Effect.flatMap(models, (store) => store.list), (list) => ({ models: list })),
    modelInspect: (p: { readonly ref: string }) => Effect.flatMap(models, (store) => store.inspect(p.ref)),
    modelRemove: (p: { readonly ref: string }) => Effect.flatMap(models, (store) => store.remove(p.ref)),
    modelPrune: () => Effect.flatMap(models, (store) => store.prune),
    modelServe: (p: ServeOptions & { readonly ref: string }) =>
      Effect.flatMap(runners, (r) => r.serve(p.ref, p)),
    modelStop: (p: { readonly ref: string }) => Effect.flatMap(runners, (r) => r.stop(p.ref)),
    modelRunners: () => Effect.map(Effect.flatMap(runners, (r) => r.list), (list) => ({ runners: list })),
    modelPolicyValidate: (p: { readonly file: string }) => modelPolicyValidate(p.file),
    modelPolicyEvaluate: ({ expect, file, ...request }: PolicyEvaluatePayload) =>
      modelPolicyEvaluate(file, request, expect),
    kernelList: () =>
      Effect.map(Effect.flatMap(kernels, (cache) => cache.list), (list) => ({ kernels: list })),
    kernelVerify: () =>
      Effect.map(
        Effect.flatMap(kernels, (cache) => cache.verify),
        (files) => ({ ok: files.every((file) => file.ok), files })
      ),
    doctor: () => Effect.provide(doctorWithState(home), HostChecks.layer),
    stateCheck: () => checkState().pipe(Effect.provideService(Home, home), Effect.provide(HostChecks.layer)),
    stateBackup: (p: { readonly to?: string | undefined }) =>
      backupState({ to: p.to }).pipe(Effect.provideService(Home, home), Effect.provide(HostChecks.layer))
  }
})

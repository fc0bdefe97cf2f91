/**
 * A backend's layer provides exactly what its type says: a host program that needs a service the fake
 * backend does not have is a type error, not "Service not found" at run time.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Layer, Option } from "effect"
import { backendLayer } from "../../src/layers/backends/Backends.ts"
import { GuestChannel } from "../../src/services/GuestChannel.ts"
import { Hypervisor } from "../../src/services/Hypervisor.ts"
import { ImageStore } from "../../src/services/ImageStore.ts"
import { KernelCache } from "../../src/services/KernelCache.ts"
import { Networks } from "../../src/services/Networks.ts"
import { fakeEnvironment } from "../support/fakeEnvironment.ts"

describe("backend layers", () => {
  it.scoped("the fake backend provides its declared services, and no kernel cache", () =>
    Effect.gen(function*() {
      const context = yield* Layer.build(fakeEnvironment)
      const has = (key: string) => Option.isSome(Context.getOption(context, Context.GenericTag(key)))
      for (const tag of [Hypervisor, GuestChannel, ImageStore, Networks]) assert.isTrue(has(tag.key), tag.key)
      assert.isFalse(has(KernelCache.key))
    }))

  it("a program that needs a kernel cache does not type-check against a backend layer alone", () => {
    const needsKernels = Effect.flatMap(KernelCache, (kernels) => kernels.list)
    // @ts-expect-error KernelCache is not part of BackendServices: provide FileKernelCache for it.
    const provided: Effect.Effect<unknown, unknown, never> = needsKernels.pipe(
      Effect.provide(backendLayer("fake"))
    )
    assert.isDefined(provided)
  })
})

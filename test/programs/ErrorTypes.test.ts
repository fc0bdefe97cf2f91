/**
 * Pins the error types that services and programs declare: a caller can tell from the type what a call
 * can fail with. Checked by the type checker (`tsc -p .` covers test/); the runtime part is empty.
 */
import type { Effect } from "effect"
import { describe, expectTypeOf, it } from "vitest"
import type {
  Conflict,
  InvalidInput,
  MicroagentError,
  NotFound,
  Permanent,
  PolicyDenied,
  ResourceExhausted,
  Transient,
  Unsupported
} from "../../src/domain/Errors.ts"
import type { exec } from "../../src/programs/Exec.ts"
import type { halt, kill } from "../../src/programs/Halt.ts"
import type { HypervisorShape, LaunchError } from "../../src/services/Hypervisor.ts"
import type { EnsureError, ImageRecord, ImageStoreShape } from "../../src/services/ImageStore.ts"
import type { RegistryError } from "../../src/services/Registry.ts"
import type { VolumesShape } from "../../src/services/Volumes.ts"

type ErrorOf<F extends (...args: never) => Effect.Effect<unknown, unknown, unknown>> = Effect.Effect.Error<
  ReturnType<F>
>

describe("declared error types", () => {
  it("Hypervisor.launch and restore fail with LaunchError, the other methods with less", () => {
    expectTypeOf<LaunchError>().toEqualTypeOf<
      Unsupported | Permanent | InvalidInput | NotFound | Conflict | Transient
    >()
    expectTypeOf<ErrorOf<HypervisorShape["launch"]>>().toEqualTypeOf<LaunchError>()
    expectTypeOf<ErrorOf<HypervisorShape["restore"]>>().toEqualTypeOf<LaunchError>()
    expectTypeOf<ErrorOf<HypervisorShape["kill"]>>().toEqualTypeOf<InvalidInput>()
    expectTypeOf<ErrorOf<HypervisorShape["halt"]>>().toEqualTypeOf<Transient | InvalidInput>()
  })

  it("the image store's reads fail narrowly; pulling can fail with all but Conflict and Unsupported", () => {
    expectTypeOf<ImageStoreShape["list"]>().toEqualTypeOf<
      Effect.Effect<ReadonlyArray<ImageRecord>, Permanent>
    >()
    expectTypeOf<ErrorOf<ImageStoreShape["inspect"]>>().toEqualTypeOf<Permanent | NotFound | Conflict>()
    expectTypeOf<ErrorOf<ImageStoreShape["ensure"]>>().toEqualTypeOf<EnsureError>()
    expectTypeOf<Extract<EnsureError, Conflict | Unsupported>>().toBeNever()
    expectTypeOf<RegistryError>().toEqualTypeOf<
      Transient | Permanent | NotFound | ResourceExhausted | PolicyDenied | InvalidInput
    >()
  })

  it("Volumes.attach fails with what a claim can", () => {
    expectTypeOf<ErrorOf<VolumesShape["attach"]>>().toEqualTypeOf<
      Permanent | Conflict | NotFound | InvalidInput
    >()
  })

  it("exec cannot fail with the image store's or the registry's errors", () => {
    type ExecError = ErrorOf<typeof exec>
    expectTypeOf<ExecError>().toEqualTypeOf<Permanent | Conflict | NotFound | Transient | InvalidInput>()
    expectTypeOf<Extract<ExecError, ResourceExhausted | PolicyDenied | Unsupported>>().toBeNever()
    // Narrower than the whole union, which the surfaces still accept.
    expectTypeOf<ExecError>().toExtend<MicroagentError>()
    expectTypeOf<MicroagentError>().not.toExtend<ExecError>()
  })

  it("halt and kill fail with the lifecycle's errors only", () => {
    expectTypeOf<ErrorOf<typeof halt>>().toEqualTypeOf<
      Permanent | Conflict | NotFound | Transient | InvalidInput
    >()
    expectTypeOf<ErrorOf<typeof kill>>().toEqualTypeOf<
      Permanent | Conflict | NotFound | Transient | InvalidInput
    >()
  })
})

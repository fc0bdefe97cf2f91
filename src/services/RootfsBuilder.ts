/**
 * RootfsBuilder: applies an image's layers, in order, to a private stage and writes an ext4 image.
 * The output appears atomically (renamed into place) or not at all.
 */
import { Context, type Effect } from "effect"
import type { InvalidInput, Permanent, PolicyDenied, ResourceExhausted } from "../domain/Errors.ts"
import type { RegistryError } from "./Registry.ts"

export interface BuildProgress {
  readonly phase: "extract-layers" | "build-ext4" | "apply-ledger" | "complete"
  readonly layer?: number
  readonly layers?: number
  readonly bytes?: number
}

export interface BuildRequest {
  /**
   * The layers, bottom first. Each is an effect yielding the path of a verified blob, so the builder can
   * start on the first while later ones are still downloading.
   */
  readonly layers: ReadonlyArray<{
    readonly digest: string
    /** Compressed size, used to decide whether the stage fits in memory. */
    readonly size?: number | undefined
    readonly blob: Effect.Effect<string, RegistryError>
  }>
  /** Where the finished image goes; must be on the same filesystem as the Home's tmp dir. */
  readonly output: string
  /** Fixed size; fails with the size needed when the content does not fit. Default: content plus headroom. */
  readonly sizeMiB?: number | undefined
  readonly allowGuestSetuid?: boolean | undefined
  /** Refuse character and block devices (accepted by default: they are created only inside the image). */
  readonly refuseDevices?: boolean | undefined
  readonly onProgress?: ((progress: BuildProgress) => void) | undefined
}

export interface BuildResult {
  readonly sizeBytes: number
  /** The smallest size (MiB) the content fits in. */
  readonly neededMiB: number
  readonly entries: number
  /** Guest paths whose setuid/setgid bits the policy removed. */
  readonly setuidStripped: ReadonlyArray<string>
  readonly setuidPolicy: "strip" | "keep"
}

export interface RootfsBuilderShape {
  readonly build: (
    request: BuildRequest
  ) => Effect.Effect<BuildResult, RegistryError | Permanent | PolicyDenied | ResourceExhausted | InvalidInput>
}

export class RootfsBuilder
  extends Context.Tag("microagent/RootfsBuilder")<RootfsBuilder, RootfsBuilderShape>()
{}

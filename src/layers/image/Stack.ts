/**
 * The image store with everything it needs, for a given state directory: Home, the SQLite store,
 * the HTTP registry client and the host rootfs builder. Used by the `image` commands and tests;
 * the lifecycle programs get ImageStoreLive from their own composition.
 */
import type { SqlClient } from "@effect/sql"
import { Effect, Layer } from "effect"
import type { Permanent, ResourceExhausted } from "../../domain/Errors.ts"
import { Home } from "../../services/Home.ts"
import type { ImageStore } from "../../services/ImageStore.ts"
import type { Registry } from "../../services/Registry.ts"
import type { RootfsBuilder } from "../../services/RootfsBuilder.ts"
import { RegistryHttp } from "../registry/Http.ts"
import * as RootfsBuilderLive from "../rootfs/RootfsBuilderLive.ts"
import * as Database from "../state/Database.ts"
import * as ImageStoreLive from "./ImageStoreLive.ts"
/** Home, SqlClient, Registry and RootfsBuilder for the state directory `root`. */
export const imageDependencies = (
  root: string
): Layer.Layer<Home | SqlClient.SqlClient | Registry | RootfsBuilder, Permanent | ResourceExhausted> =>
  Layer.mergeAll(Database.layer, RegistryHttp.layer(root), RootfsBuilderLive.layer).pipe(
    Layer.provideMerge(Home.layer(root))
  )

/** ImageStore and its dependencies for the state directory `root`. */
export const imageStoreLayer = (
  root: string
): Layer.Layer<
  ImageStore | Home | SqlClient.SqlClient | Registry | RootfsBuilder,
  Permanent | ResourceExhausted
> => ImageStoreLive.layer.pipe(Layer.provideMerge(imageDependencies(root)))

/**
 * ImageStore for a composition that already has Home and SqlClient (the runtime, the lifecycle programs):
 * adds the HTTP registry client (credentials include `<home>/auth.json`) and the host rootfs builder.
 */
export const ImageStoreOnHome: Layer.Layer<ImageStore, never, Home | SqlClient.SqlClient> = Layer
  .unwrapEffect(
    Effect.map(Home, (home) =>
      ImageStoreLive.layer.pipe(
        Layer.provide(Layer.mergeAll(RegistryHttp.layer(home.root), RootfsBuilderLive.layer))
      ))
  )

/**
 * Which layers make up each backend: the Hypervisor, the guest channel and the image store it boots from.
 */
import { Layer } from "effect"
import { Unsupported } from "../../domain/Errors.ts"
import type { Backend } from "../../domain/Workspace.ts"
import type { GuestChannel } from "../../services/GuestChannel.ts"
import type { Home } from "../../services/Home.ts"
import type { Hypervisor } from "../../services/Hypervisor.ts"
import type { ImageStore } from "../../services/ImageStore.ts"
import type { SqlClient } from "@effect/sql"
import { FakeGuestChannel } from "../hypervisor/fake/FakeGuestChannel.ts"
import { FakeHypervisor } from "../hypervisor/fake/FakeHypervisor.ts"
import { FakeImageStore } from "../hypervisor/fake/FakeImageStore.ts"

export type BackendServices = Hypervisor | GuestChannel | ImageStore

export const defaultBackend = (): Backend => {
  const fromEnv = process.env.MICROAGENT_BACKEND
  return fromEnv === "fake" || fromEnv === "qemu" || fromEnv === "firecracker" ? fromEnv : "qemu"
}

export const backendLayer = (
  backend: Backend
): Layer.Layer<BackendServices, Unsupported, Home | SqlClient.SqlClient> => {
  switch (backend) {
    case "fake":
      return Layer.mergeAll(FakeHypervisor, FakeGuestChannel, FakeImageStore)
    default:
      return Layer.fail(
        new Unsupported({
          message: `the ${backend} backend is not available in this build`,
          remediation: "use --backend fake",
          backend,
          feature: "launch"
        })
      )
  }
}

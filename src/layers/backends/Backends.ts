/**
 * Which layers make up each backend: the Hypervisor, the guest channel, the image store it boots from,
 * named networks' records and the fabric its members are plugged into.
 */
import type { SqlClient } from "@effect/sql"
import { Layer } from "effect"
import { Effect } from "effect"
import { Unsupported } from "../../domain/Errors.ts"
import type { Backend } from "../../domain/Workspace.ts"
import type { GuestChannel } from "../../services/GuestChannel.ts"
import type { Home } from "../../services/Home.ts"
import { Home as HomeTag } from "../../services/Home.ts"
import type { Hypervisor } from "../../services/Hypervisor.ts"
import type { ImageStore } from "../../services/ImageStore.ts"
import type { NetworkFabric } from "../../services/NetworkFabric.ts"
import type { Networks } from "../../services/Networks.ts"
import * as CredentialBrokerLive from "../broker/CredentialBrokerLive.ts"
import { AgentChannel } from "../guest/AgentChannel.ts"
import * as SharedGuestChannel from "../guest/SharedGuestChannel.ts"
import * as FakeGuestChannel from "../hypervisor/fake/FakeGuestChannel.ts"
import * as FakeHypervisor from "../hypervisor/fake/FakeHypervisor.ts"
import * as FakeImageStore from "../hypervisor/fake/FakeImageStore.ts"
import * as FakeNetworkFabric from "../hypervisor/fake/FakeNetworkFabric.ts"
import { QemuHypervisor } from "../hypervisor/qemu/Qemu.ts"
import * as ImageStoreLive from "../image/ImageStoreLive.ts"
import { FileKernelCache } from "../kernel/FileKernelCache.ts"
import * as ModelRunnersLive from "../model/ModelRunnersLive.ts"
import * as ModelsLive from "../model/ModelsLive.ts"
import * as EgressLive from "../network/EgressLive.ts"
import * as NetworkFabricLive from "../network/NetworkFabricLive.ts"
import * as NetworksLive from "../network/NetworksLive.ts"
import { RegistryHttp } from "../registry/Http.ts"
import * as RootfsBuilderLive from "../rootfs/RootfsBuilderLive.ts"
/**
 * What every backend provides. A kernel cache is not among them: the fake backend boots no kernel, so
 * `start` looks for `KernelCache` as an optional service, and the QEMU backend provides one beside these;
 * likewise `Egress` (egress mediation), which `start` requires for a mediated workspace on a real backend.
 */
export type BackendServices = Hypervisor | GuestChannel | ImageStore | Networks | NetworkFabric

export const defaultBackend = (): Backend => {
  const fromEnv = process.env.MICROAGENT_BACKEND
  return fromEnv === "fake" || fromEnv === "qemu" || fromEnv === "firecracker" ? fromEnv : "qemu"
}

export const backendLayer = (
  backend: Backend
): Layer.Layer<
  BackendServices,
  Unsupported,
  Home | SqlClient.SqlClient
> => {
  switch (backend) {
    case "fake":
      return Layer.mergeAll(
        FakeHypervisor.layer,
        FakeGuestChannel.layer,
        FakeImageStore.layer,
        NetworksLive.layer,
        FakeNetworkFabric.layer
      )
    case "qemu":
      return qemuLayer
    default:
      return Layer.fail(
        new Unsupported({
          message: `the ${backend} backend is not available in this build`,
          remediation: "use --backend qemu (the default)",
          backend,
          feature: "launch"
        })
      )
  }
}

/** QEMU microVMs: the agent channel over virtio-serial, images from registries, the Debian cloud kernel. */
const qemuLayer = Layer.unwrapEffect(
  Effect.map(
    HomeTag,
    (home) =>
      Layer.mergeAll(
        QemuHypervisor.layer(),
        ImageStoreLive.layer,
        FileKernelCache.layer(),
        NetworksLive.layer,
        NetworkFabricLive.layer,
        EgressLive.layer,
        // The credential broker, for workspaces with `--broker` endpoints.
        CredentialBrokerLive.layer,
        // Models and their runners, for workspaces paired with a model (`--model`).
        ModelRunnersLive.layer.pipe(Layer.provideMerge(ModelsLive.layer))
      ).pipe(
        Layer.provideMerge(SharedGuestChannel.layer.pipe(Layer.provide(AgentChannel.layer))),
        Layer.provide(Layer.mergeAll(RegistryHttp.layer(home.root), RootfsBuilderLive.layer))
      )
  )
)

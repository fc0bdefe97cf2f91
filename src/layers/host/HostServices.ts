/**
 * The services the programs use on this host whatever the backend: its processes, fault points, the
 * rootfs builder (bundle disks are built on the host) and host trees as tar streams (copies in and out).
 * `Microagent.layerStore` provides them beside the store, so every composition of the library has them.
 */
import { Layer } from "effect"
import type { Faults } from "../../services/Faults.ts"
import type { Home } from "../../services/Home.ts"
import type { HostTrees } from "../../services/HostTrees.ts"
import type { Processes } from "../../services/Processes.ts"
import type { RootfsBuilder } from "../../services/RootfsBuilder.ts"
import { FaultsLive } from "../process/FaultPoint.ts"
import { ProcessesLive } from "../process/ProcessesLive.ts"
import { HostTreesLive } from "../rootfs/HostTreesLive.ts"
import { RootfsBuilderLive } from "../rootfs/RootfsBuilderLive.ts"

export type HostServices = Processes | Faults | RootfsBuilder | HostTrees

export const HostServicesLive: Layer.Layer<HostServices, never, Home> = Layer.mergeAll(
  ProcessesLive,
  FaultsLive,
  RootfsBuilderLive,
  HostTreesLive
)

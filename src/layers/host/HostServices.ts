/**
 * The services the programs use on this host whatever the backend: its processes, fault points, the
 * rootfs builder (bundle disks are built on the host), host trees as tar streams, the files of stopped
 * workspaces' disks (copies in and out) and their whole trees (commits).
 * `Microagent.layerStore` provides them beside the store, so every composition of the library has them.
 */
import { Layer } from "effect"
import type { DiskFiles } from "../../services/DiskFiles.ts"
import type { DiskTrees } from "../../services/DiskTrees.ts"
import type { Faults } from "../../services/Faults.ts"
import type { Home } from "../../services/Home.ts"
import type { HostTrees } from "../../services/HostTrees.ts"
import type { Processes } from "../../services/Processes.ts"
import type { RootfsBuilder } from "../../services/RootfsBuilder.ts"
import * as FaultPoint from "../process/FaultPoint.ts"
import * as ProcessesLive from "../process/ProcessesLive.ts"
import * as DiskFilesLive from "../rootfs/DiskFilesLive.ts"
import * as DiskTreesLive from "../rootfs/DiskTreesLive.ts"
import * as HostTreesLive from "../rootfs/HostTreesLive.ts"
import * as RootfsBuilderLive from "../rootfs/RootfsBuilderLive.ts"
export type HostServices = Processes | Faults | RootfsBuilder | HostTrees | DiskFiles | DiskTrees

export const layer: Layer.Layer<HostServices, never, Home> = Layer.mergeAll(
  ProcessesLive.layer,
  FaultPoint.layer,
  RootfsBuilderLive.layer,
  HostTreesLive.layer,
  DiskFilesLive.layer,
  DiskTreesLive.layer
)

/**
 * The services the programs use on this host whatever the backend: its processes and fault points.
 * `Microagent.layerStore` provides them beside the store, so every composition of the library has them.
 */
import { Layer } from "effect"
import type { Faults } from "../../services/Faults.ts"
import type { Processes } from "../../services/Processes.ts"
import { FaultsLive } from "../process/FaultPoint.ts"
import { ProcessesLive } from "../process/ProcessesLive.ts"

export type HostServices = Processes | Faults

export const HostServicesLive: Layer.Layer<HostServices> = Layer.mergeAll(ProcessesLive, FaultsLive)

/**
 * Warm-start templates: a VM booted once per image, kernel and machine shape and saved the moment its
 * agent answered, which the first start of a matching workspace restores instead of booting (see
 * docs/snapshots.md, "Warm starts"). Pure: the key, the manifest, and which starts may use one.
 */
import { Schema } from "effect"
import { createHash } from "node:crypto"

/** Everything the saved guest depends on; equal shapes give the same template. */
export const TemplateShape = Schema.Struct({
  backend: Schema.String,
  imageDigest: Schema.String,
  /** Apparent size of the root disk (an image cloned to another size is another disk). */
  diskBytes: Schema.Number,
  kernelSha256: Schema.String,
  /** The initramfs, which carries the guest agent. */
  initrdSha256: Schema.String,
  memoryMiB: Schema.Int,
  cpus: Schema.Int,
  network: Schema.Literal("user", "isolated"),
  /**
   * Extra disks (volumes, disk images, bundles): the template's guest booted with as many empty
   * stand-ins, whose places a restore gives to the workspace's own. Absent: none.
   */
  disks: Schema.optional(Schema.Int.pipe(Schema.between(1, 16))),
  /**
   * NICs on named networks: the template's guest booted with as many stand-ins (no tap behind them, left
   * down), which a restore gives the workspace's taps, MACs and addresses. Absent: none.
   */
  nets: Schema.optional(Schema.Int.pipe(Schema.between(1, 8))),
  /**
   * A model channel, and credential broker channels: the template's machine has them, and its guest
   * serves none (a restore has the agent start the forwarders). Absent: none.
   */
  model: Schema.optional(Schema.Literal(true)),
  brokers: Schema.optional(Schema.Int.pipe(Schema.between(1, 8))),
  /**
   * The backend's guest variant (for QEMU the boot profile and its emulated CPU): a guest booted with
   * other kernel options or another CPU model is another template. Absent: the backend has none.
   */
  variant: Schema.optional(Schema.String)
})
export type TemplateShape = typeof TemplateShape.Type

/** The template's name in the store: a digest of its shape, fields in a fixed order. */
export const templateKey = (shape: TemplateShape): string =>
  createHash("sha256")
    .update(
      JSON.stringify([
        shape.backend,
        shape.imageDigest,
        shape.diskBytes,
        shape.kernelSha256,
        shape.initrdSha256,
        shape.memoryMiB,
        shape.cpus,
        shape.network,
        // Only when there are some: the keys of templates without disks or NICs stay what they were.
        ...(shape.disks === undefined ? [] : [`disks=${shape.disks}`]),
        ...(shape.nets === undefined ? [] : [`nets=${shape.nets}`]),
        ...(shape.model === undefined ? [] : ["model"]),
        ...(shape.brokers === undefined ? [] : [`brokers=${shape.brokers}`]),
        ...(shape.variant === undefined ? [] : [`variant=${shape.variant}`])
      ])
    )
    .digest("hex")
    .slice(0, 24)

export class TemplateManifest extends Schema.Class<TemplateManifest>("TemplateManifest")({
  formatVersion: Schema.Literal(1),
  key: Schema.String,
  /** The reference the image was known by when the template was built (informative). */
  imageRef: Schema.String,
  shape: TemplateShape,
  createdAt: Schema.String,
  /** Milliseconds from the build's start to the saved template (boot, capture, publish). */
  buildMs: Schema.Number,
  /** Bytes its files occupy on the host (sparse). */
  allocatedBytes: Schema.Number
}) {}

export class TemplateEntry extends Schema.Class<TemplateEntry>("TemplateEntry")({
  manifest: TemplateManifest,
  /** Why it can no longer be used (its image or kernel is gone), if so. */
  stale: Schema.optional(Schema.String)
}) {}

export class TemplatesPruned extends Schema.Class<TemplatesPruned>("TemplatesPruned")({
  removed: Schema.Array(Schema.String),
  kept: Schema.Number,
  freedBytes: Schema.Number
}) {}

/** The most extra disks, and NICs on named networks, a template holds stand-ins for. */
export const maxTemplateDisks = 16
export const maxTemplateNets = 8
/** The most broker endpoints a guest serves (the agent's own limit). */
export const maxTemplateBrokers = 8

/** What a start knows when it decides between a warm and a cold start. */
export interface WarmFacts {
  /** `--cold` (or MICROAGENT_WARM=0). */
  readonly cold: boolean
  /** The workspace has never been started. */
  readonly firstStart: boolean
  /** Its disk is the image's, cloned by `create` and untouched since (no offline cp or resize). */
  readonly diskPristine: boolean
  readonly imageDigest: string | undefined
  /** Read-write or read-only disks and volumes attached at start (a template holds up to 16 stand-ins). */
  readonly mounts: number
  /** Named networks joined (a NIC each; a template holds up to 8 stand-ins). */
  readonly namedNetworks: number
  /** Credential broker endpoints (a guest channel each; a template holds up to 8). */
  readonly brokers: number
  /** The backend can save and restore VMs and a kernel is in use. */
  readonly restorable: boolean
}

/**
 * Why this start must boot, or undefined when it may restore a template. A template holds a guest that
 * booted on the image's disk with stand-ins for the workspace's extra disks and named-network NICs and
 * with its model and broker channels unserved (its agent mounts, configures and serves the real ones
 * after the restore); anything else that changes the machine, or the disk the guest saw at boot, needs
 * a real boot.
 */
export const warmRefusal = (facts: WarmFacts): string | undefined =>
  facts.cold
    ? "--cold"
    : !facts.restorable
    ? "the backend cannot restore a saved VM"
    : !facts.firstStart
    ? "not the first start (the disk has a life of its own)"
    : !facts.diskPristine
    ? "the disk changed since create"
    : facts.imageDigest === undefined
    ? "the image has no digest"
    : facts.mounts > maxTemplateDisks
    ? `more than ${maxTemplateDisks} disks or volumes are attached`
    : facts.namedNetworks > maxTemplateNets
    ? `more than ${maxTemplateNets} named networks are attached`
    : facts.brokers > maxTemplateBrokers
    ? `more than ${maxTemplateBrokers} credential broker endpoints are attached`
    : undefined

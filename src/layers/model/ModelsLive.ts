/**
 * The model store on the hub's HTTP API, the file system and SQLite.
 *
 * Pull: ask paths-info for the file's LFS sha256 (no LFS digest: refused, the bytes could not be
 * checked), stream `resolve/REV/PATH` (redirects followed, as the hub sends files to a CDN) into
 * `models/partial/sha256-<hex>` while hashing, resume a partial with `Range`, then check the digest
 * and the GGUF header and only then rename into `models/blobs/sha256-<hex>` and record it. A failed
 * check removes the partial and records nothing; a cut connection keeps the partial for the next pull.
 *
 * HTTP goes through node's own client (`NodeHttpClient`), not `fetch`: the runtime runs without
 * WebAssembly (`--jitless`), which `fetch`'s parser needs.
 */
import { HttpClient, HttpClientRequest, type HttpClientResponse } from "@effect/platform"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { SqlClient } from "@effect/sql"
import { Config, Effect, Layer, Schema, Stream } from "effect"
import { createHash } from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { NotFound, Permanent, PolicyDenied, Transient } from "../../domain/Errors.ts"
import { type GgufInfo, GgufInvalid, GgufTruncated, parseGgufHeader } from "../../domain/Gguf.ts"
import {
  canonicalModelRef,
  type ModelRef,
  parseModelRef,
  pathsInfoUrl,
  resolveUrl
} from "../../domain/ModelRef.ts"
import { Home } from "../../services/Home.ts"
import { ModelRecord, Models, type ModelsShape, type PullOptions } from "../../services/Models.ts"
import { storeFailure } from "../state/StoreFailure.ts"

/** How much of a blob is read to parse its header (metadata with a large vocabulary fits). */
const headerBytes = 64 * 1024 * 1024

const PathsInfo = Schema.Array(Schema.Struct({
  path: Schema.String,
  type: Schema.optional(Schema.String),
  size: Schema.optional(Schema.Number),
  lfs: Schema.optional(Schema.Struct({ oid: Schema.String, size: Schema.optional(Schema.Number) }))
}))
const decodePathsInfo = Schema.decodeUnknown(PathsInfo)

const decodeRecord = Schema.decodeUnknown(Schema.parseJson(ModelRecord))
const encodeRecord = Schema.encodeSync(Schema.parseJson(ModelRecord))

const storeError = storeFailure({
  prefix: "model store",
  remediation: "`microagent state check` reports on the store"
})

const httpFailure = (what: string, status: number): PolicyDenied | NotFound | Transient | Permanent =>
  status === 401 || status === 403
    ? new PolicyDenied({
      message: `${what}: the hub answered ${status}`,
      remediation:
        "give a token with --token, HF_TOKEN or HUGGING_FACE_HUB_TOKEN that may read this repository"
    })
    : status === 404
    ? new NotFound({
      message: `${what}: the hub answered 404`,
      remediation: "check the reference's org, repo, revision and file"
    })
    : status >= 500 || status === 429
    ? new Transient({ message: `${what}: the hub answered ${status}`, remediation: "retry later" })
    : new Permanent({ message: `${what}: the hub answered ${status}` })

const networkFailure = (what: string) => (cause: unknown) =>
  new Transient({
    message: `${what}: ${
      cause instanceof Error
        ? (cause.cause instanceof Error ? cause.cause.message : cause.message)
        : String(cause)
    }`,
    remediation: "run the pull again: it resumes from the bytes already downloaded"
  })

const tokenOf = (options: PullOptions | undefined): string | undefined =>
  options?.token ?? process.env["HF_TOKEN"] ?? process.env["HUGGING_FACE_HUB_TOKEN"] ?? undefined

const headers = (token: string | undefined, extra: Record<string, string> = {}) =>
  token === undefined || token === "" ? extra : { ...extra, authorization: `Bearer ${token}` }

const fsTry = <A>(what: string, f: () => A) =>
  Effect.try({
    try: f,
    catch: (cause) =>
      new Permanent({ message: `${what}: ${cause instanceof Error ? cause.message : String(cause)}` })
  })

/** Parses the header from a prefix of the file: 1 MiB first, four times more while it runs past it. */
const readHead = (path: string): GgufInfo => {
  const fd = NodeFs.openSync(path, "r")
  try {
    const limit = Math.min(NodeFs.fstatSync(fd).size, headerBytes)
    for (let size = Math.min(limit, 1024 * 1024);; size = Math.min(limit, size * 4)) {
      const buf = Buffer.alloc(size)
      NodeFs.readSync(fd, buf, 0, size, 0)
      try {
        return parseGgufHeader(buf)
      } catch (error) {
        if (!(error instanceof GgufTruncated) || size >= limit) throw error
      }
    }
  } finally {
    NodeFs.closeSync(fd)
  }
}

const checkHeader = (path: string, ref: string) =>
  Effect.try({
    try: () => readHead(path),
    catch: (cause) =>
      new Permanent({
        message: `model ${ref} is not a usable GGUF file: ${
          cause instanceof GgufInvalid ? cause.message : String(cause)
        }`,
        remediation: "check that the reference names a .gguf model file"
      })
  })

/** Hashes what a partial already holds, so a resumed download is verified whole. */
const hashExisting = (path: string) =>
  Effect.tryPromise({
    try: async () => {
      const hash = createHash("sha256")
      let size = 0
      if (!NodeFs.existsSync(path)) return { hash, size }
      for await (const chunk of NodeFs.createReadStream(path)) {
        hash.update(chunk as Buffer)
        size += (chunk as Buffer).length
      }
      return { hash, size }
    },
    catch: (cause) => new Permanent({ message: `cannot read the partial download ${path}: ${String(cause)}` })
  })

/** Streams the body into the file (appending), hashing as it goes. */
const streamInto = (
  response: HttpClientResponse.HttpClientResponse,
  path: string,
  append: boolean,
  hash: ReturnType<typeof createHash>,
  start: number,
  total: number,
  onProgress: PullOptions["onProgress"]
) =>
  Effect.acquireUseRelease(
    fsTry(`opening ${path}`, () => NodeFs.openSync(path, append ? "a" : "w", 0o600)),
    (fd) => {
      let done = start
      return response.stream.pipe(
        Stream.mapError(networkFailure("the download was interrupted")),
        Stream.runForEach((bytes) =>
          fsTry(`writing ${path}`, () => {
            NodeFs.writeSync(fd, bytes)
            hash.update(bytes)
            done += bytes.length
            onProgress?.(done, total)
          })
        ),
        Effect.flatMap(() => fsTry(`writing ${path}`, () => NodeFs.fsyncSync(fd))),
        Effect.map(() => done)
      )
    },
    (fd) => Effect.sync(() => NodeFs.closeSync(fd))
  )

export const layer = Layer.effect(
  Models,
  Effect.gen(function*() {
    const home = yield* Home
    // The hub sends files to a CDN: redirects are followed.
    const http = HttpClient.followRedirects(yield* HttpClient.HttpClient, 10)
    const sql = yield* SqlClient.SqlClient
    const endpoint = yield* Config.string("MICROAGENT_HF_ENDPOINT").pipe(
      Config.withDefault("https://huggingface.co"),
      Effect.orElseSucceed(() => "https://huggingface.co")
    )
    const root = NodePath.join(home.root, "models")
    const blobs = NodePath.join(root, "blobs")
    const partials = NodePath.join(root, "partial")
    const blobPath = (hex: string) => NodePath.join(blobs, `sha256-${hex}`)

    const findRecord = (ref: string): Effect.Effect<ModelRecord, Permanent | NotFound> =>
      sql<{ record: string }>`SELECT record FROM models WHERE ref = ${ref}`.pipe(
        Effect.mapError(storeError),
        Effect.flatMap((rows): Effect.Effect<ModelRecord, Permanent | NotFound> =>
          rows.length === 0
            ? Effect.fail(
              new NotFound({
                message: `model ${ref} not found`,
                remediation:
                  "`microagent model list` lists the pulled models; `microagent model pull REF` pulls one"
              })
            )
            : decodeRecord(rows[0]!.record).pipe(Effect.mapError(storeError))
        )
      )

    const expectedDigest = Effect.fn("Models.expectedDigest")(
      function*(ref: ModelRef, token: string | undefined) {
        const what = `paths-info for ${canonicalModelRef(ref)}`
        const response = yield* http.execute(
          HttpClientRequest.post(pathsInfoUrl(endpoint, ref)).pipe(
            HttpClientRequest.setHeaders(headers(token)),
            HttpClientRequest.bodyUrlParams({ paths: ref.path, expand: "false" })
          )
        ).pipe(Effect.mapError(networkFailure(what)))
        if (response.status < 200 || response.status > 299) {
          return yield* Effect.fail(httpFailure(what, response.status))
        }
        const body = yield* response.json.pipe(Effect.mapError(networkFailure(what)))
        const entries = yield* decodePathsInfo(body).pipe(
          Effect.mapError(() =>
            new Permanent({ message: `${what}: the hub's answer is not a paths-info list` })
          )
        )
        const entry = entries.find((e) => e.path === ref.path)
        if (entry === undefined) {
          return yield* Effect.fail(
            new NotFound({
              message: `${canonicalModelRef(ref)}: the hub has no such file at revision ${ref.revision}`
            })
          )
        }
        const oid = entry.lfs?.oid.replace(/^sha256:/, "").toLowerCase()
        if (oid === undefined || !/^[0-9a-f]{64}$/.test(oid)) {
          return yield* Effect.fail(
            new PolicyDenied({
              message: `${
                canonicalModelRef(ref)
              } has no LFS sha256 on the hub, so its bytes cannot be verified; refused`,
              remediation: "pull a file stored with Git LFS (GGUF model files on Hugging Face are)"
            })
          )
        }
        return { hex: oid, size: entry.lfs?.size ?? entry.size ?? 0 }
      }
    )

    const pull: ModelsShape["pull"] = Effect.fn("Models.pull")(function*(input, options) {
      const ref = yield* parseModelRef(input)
      const canonical = canonicalModelRef(ref)
      const token = tokenOf(options)
      const expected = yield* expectedDigest(ref, token)
      yield* home.ensureDir(blobs)
      yield* home.ensureDir(partials)
      const partial = NodePath.join(partials, `sha256-${expected.hex}`)
      const url = resolveUrl(endpoint, ref)
      const final = blobPath(expected.hex)
      // The header is checked once: on the download before it is published, or on the stored file.
      let checked: GgufInfo | undefined
      if (!NodeFs.existsSync(final)) {
        const existing = yield* hashExisting(partial)
        const what = `download of ${canonical}`
        const response = yield* http.execute(
          HttpClientRequest.get(url).pipe(
            HttpClientRequest.setHeaders(
              headers(token, existing.size > 0 ? { range: `bytes=${existing.size}-` } : {})
            )
          )
        ).pipe(Effect.mapError(networkFailure(what)))
        if (response.status === 416 && existing.size > 0) {
          // The partial already holds every byte (or more): start over rather than trust it.
          yield* fsTry("removing the partial download", () => NodeFs.rmSync(partial, { force: true }))
          return yield* Effect.fail(
            new Transient({
              message: `${what}: the partial download was stale and was removed`,
              remediation: "run the pull again"
            })
          )
        }
        if (response.status < 200 || response.status > 299) {
          return yield* Effect.fail(httpFailure(what, response.status))
        }
        const resumed = response.status === 206 && existing.size > 0
        const hash = resumed ? existing.hash : createHash("sha256")
        const size = yield* streamInto(
          response,
          partial,
          resumed,
          hash,
          resumed ? existing.size : 0,
          expected.size,
          options?.onProgress
        )
        const got = hash.digest("hex")
        const discard = fsTry("removing the partial download", () => NodeFs.rmSync(partial, { force: true }))
        if (got !== expected.hex) {
          yield* discard
          return yield* Effect.fail(
            new Permanent({
              message:
                `${canonical}: downloaded ${size} bytes with sha256 ${got}, but the hub says sha256 ${expected.hex}; refused and removed`,
              remediation:
                "pull again; if it repeats, the hub or a proxy is serving different bytes than it describes"
            })
          )
        }
        checked = yield* checkHeader(partial, canonical).pipe(Effect.tapError(() => discard))
        yield* fsTry("publishing the model blob", () => {
          NodeFs.chmodSync(partial, 0o600)
          NodeFs.renameSync(partial, final)
        })
      }
      const gguf = checked ?? (yield* checkHeader(final, canonical))
      const record = new ModelRecord({
        ref: canonical,
        resolvedUrl: url,
        digest: `sha256:${expected.hex}`,
        sizeBytes: NodeFs.statSync(final).size,
        path: final,
        gguf,
        pulledAt: new Date().toISOString()
      })
      yield* sql`INSERT INTO models (ref, digest, record, created_at) VALUES (${canonical}, ${record.digest}, ${
        encodeRecord(record)
      }, ${record.pulledAt}) ON CONFLICT (ref) DO UPDATE SET digest = excluded.digest, record = excluded.record`
        .pipe(
          Effect.mapError(storeError)
        )
      return record
    })

    const list: ModelsShape["list"] = sql<{ record: string }>`SELECT record FROM models ORDER BY ref`.pipe(
      Effect.mapError(storeError),
      Effect.flatMap((rows) =>
        Effect.forEach(rows, (row) => decodeRecord(row.record).pipe(Effect.mapError(storeError)))
      ),
      Effect.withSpan("Models.list")
    )

    const inspect: ModelsShape["inspect"] = Effect.fn("Models.inspect")(function*(input) {
      const ref = yield* parseModelRef(input)
      const record = yield* findRecord(canonicalModelRef(ref))
      if (!NodeFs.existsSync(record.path)) {
        return yield* Effect.fail(
          new NotFound({
            message: `model ${record.ref}: its blob ${record.path} is missing`,
            remediation: "`microagent model pull` it again, or `model prune`"
          })
        )
      }
      const gguf = yield* checkHeader(record.path, record.ref)
      return new ModelRecord({ ...record, gguf })
    })

    const remove: ModelsShape["remove"] = Effect.fn("Models.remove")(function*(input) {
      const ref = yield* parseModelRef(input)
      const record = yield* findRecord(canonicalModelRef(ref))
      yield* sql`DELETE FROM models WHERE ref = ${record.ref}`.pipe(Effect.mapError(storeError))
      const users = yield* sql<
        { n: number }
      >`SELECT count(*) AS n FROM models WHERE digest = ${record.digest}`.pipe(
        Effect.mapError(storeError)
      )
      if ((users[0]?.n ?? 0) === 0) {
        yield* fsTry("removing the model blob", () => NodeFs.rmSync(record.path, { force: true }))
      }
      return record
    })

    const prune: ModelsShape["prune"] = Effect.gen(function*() {
      const records = yield* list
      const used = new Set(records.map((r) => NodePath.basename(r.path)))
      const entries = (dir: string) => (NodeFs.existsSync(dir) ? NodeFs.readdirSync(dir) : [])
      const removedPartials = entries(partials)
      const removedBlobs = entries(blobs).filter((name) => !used.has(name))
      yield* fsTry("pruning the model store", () => {
        for (const name of removedPartials) NodeFs.rmSync(NodePath.join(partials, name), { force: true })
        for (const name of removedBlobs) NodeFs.rmSync(NodePath.join(blobs, name), { force: true })
      })
      return { partials: removedPartials, blobs: removedBlobs }
    }).pipe(Effect.withSpan("Models.prune"))

    return Models.of({ pull, list, inspect, remove, prune })
  })
).pipe(Layer.provide(NodeHttpClient.layer))

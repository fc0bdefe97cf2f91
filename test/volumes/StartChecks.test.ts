/**
 * What `start` checks before the workspace changes state, on the fake backend: the secret values
 * match the references, the backend attaches such disks, the volumes exist. A refusal leaves the
 * workspace as it was; delivered secrets land in the guest's /run/secrets.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Layer, Option, Redacted } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { ExecRequest } from "../../src/domain/Exec.ts"
import { Mount, SecretRef } from "../../src/domain/Workspace.ts"
import * as VolumesLive from "../../src/layers/volume/VolumesLive.ts"
import { create } from "../../src/programs/Create.ts"
import { remove } from "../../src/programs/Delete.ts"
import { exec } from "../../src/programs/Exec.ts"
import { start } from "../../src/programs/Start.ts"
import { StateStore } from "../../src/services/StateStore.ts"
import { fakeEnvironment } from "../support/fakeEnvironment.ts"

const environment = Layer.provideMerge(VolumesLive.layer, fakeEnvironment)

const failureTag = (exit: Exit.Exit<unknown, { readonly _tag: string }>) =>
  Exit.isFailure(exit) ? Option.getOrThrow(Cause.failureOption(exit.cause))._tag : "success"

const value = (text: string) => Redacted.make(new Uint8Array(Buffer.from(text)))

describe("start's checks before boot", () => {
  it.scopedLive("secret values must match the references; a mismatch leaves the workspace prepared", () =>
    Effect.gen(function*() {
      const store = yield* StateStore
      yield* create({
        image: "alpine",
        name: "s1",
        secrets: [new SecretRef({ name: "TOKEN", source: "env:X" })]
      })
      assert.strictEqual(failureTag(yield* Effect.exit(start("s1"))), "InvalidInput")
      assert.strictEqual(
        failureTag(yield* Effect.exit(start("s1", { secretValues: [{ name: "OTHER", value: value("v") }] }))),
        "InvalidInput"
      )
      assert.strictEqual(
        failureTag(yield* Effect.exit(start("s1", { secretValues: [{ name: "TOKEN", value: value("") }] }))),
        "InvalidInput"
      )
      assert.strictEqual((yield* store.get("s1")).state, "prepared")
      yield* start("s1", { secretValues: [{ name: "TOKEN", value: value("in-memory") }] })
      const read = yield* exec("s1", new ExecRequest({ argv: ["sh", "-c", "cat run/secrets/TOKEN"] }))
      assert.strictEqual(read.stdout, "in-memory")
      yield* remove("s1", { force: true })
    }).pipe(Effect.provide(environment)))

  it.scopedLive("start records --secret references, replacing one of the same name", () =>
    Effect.gen(function*() {
      yield* create({ image: "alpine", name: "s2", secrets: [new SecretRef({ name: "A", source: "env:X" })] })
      const started = yield* start("s2", {
        secrets: [
          new SecretRef({ name: "A", source: "env:Y" }),
          new SecretRef({ name: "B", source: "env:Z" })
        ],
        secretValues: [{ name: "A", value: value("a") }, { name: "B", value: value("b") }]
      })
      assert.deepStrictEqual(started.secrets.map((s) => `${s.name}=${s.source}`), ["A=env:Y", "B=env:Z"])
      yield* remove("s2", { force: true })
    }).pipe(Effect.provide(environment)))

  it.scopedLive("a bundle or image mount on a backend that attaches named volumes only is unsupported, before any state change", () =>
    Effect.gen(function*() {
      const store = yield* StateStore
      const image = NodePath.join(yield* Effect.sync(() => NodeFs.mkdtempSync("/tmp/ma-start-")), "d.ext4")
      NodeFs.writeFileSync(image, "")
      yield* create({
        image: "alpine",
        name: "m1",
        mounts: [new Mount({ kind: "image", source: image, target: "/d", readOnly: false })]
      })
      assert.strictEqual(failureTag(yield* Effect.exit(start("m1"))), "Unsupported")
      assert.strictEqual((yield* store.get("m1")).state, "prepared")
      NodeFs.rmSync(NodePath.dirname(image), { recursive: true, force: true })
    }).pipe(Effect.provide(environment)))

  it.scopedLive("create refuses unsound mounts and secret references sent by an API caller", () =>
    Effect.gen(function*() {
      const bad = yield* Effect.exit(create({
        image: "alpine",
        name: "m2",
        mounts: [new Mount({ kind: "volume", source: "data", target: "relative", readOnly: false })]
      }))
      assert.strictEqual(failureTag(bad), "InvalidInput")
      const secret = yield* Effect.exit(create({
        image: "alpine",
        name: "m3",
        secrets: [new SecretRef({ name: "A", source: "keychain:x" })]
      }))
      assert.strictEqual(failureTag(secret), "InvalidInput")
      const store = yield* StateStore
      assert.deepStrictEqual(yield* store.list, [])
    }).pipe(Effect.provide(environment)))
})

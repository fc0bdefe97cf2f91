/**
 * Secrets on the fake backend: delivered as files under the fake guest's root (`run/secrets`, 0700,
 * each 0400), read by a command from its working directory `/` or through `$MICROAGENT_SECRETS_DIR`,
 * never written outside the workspace's directory (a guest's symlink cannot send them elsewhere), and
 * gone once the fake VM stops, as a real guest's tmpfs goes with it.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { ExecRequest } from "../../src/domain/Exec.ts"
import { SecretRef } from "../../src/domain/Workspace.ts"
import { create } from "../../src/programs/Create.ts"
import { exec } from "../../src/programs/Exec.ts"
import { halt, kill } from "../../src/programs/Halt.ts"
import { start } from "../../src/programs/Start.ts"
import { Home } from "../../src/services/Home.ts"
import { StateStore } from "../../src/services/StateStore.ts"
import { fakeEnvironment } from "../support/fakeEnvironment.ts"

const sh = (script: string) => new ExecRequest({ argv: ["sh", "-c", script] })
const value = (text: string) => Redacted.make(new Uint8Array(Buffer.from(text)))

/** Every file under `dir` whose content includes `needle`. */
const holding = (dir: string, needle: string): Array<string> =>
  (NodeFs.readdirSync(dir, { recursive: true }) as Array<string>)
    .map((entry) => NodePath.join(dir, entry))
    .filter((path) => {
      const stat = NodeFs.lstatSync(path)
      return stat.isFile() && NodeFs.readFileSync(path).includes(needle)
    })

describe("secrets on the fake backend", () => {
  it.scopedLive("are readable by the guest's commands while it runs, private, and gone after a halt or a kill", () =>
    Effect.gen(function*() {
      const store = yield* StateStore
      const home = yield* Home
      yield* create({
        image: "alpine",
        name: "sec",
        secrets: [
          new SecretRef({ name: "API_TOKEN", source: "env:T" }),
          new SecretRef({ name: "B", source: "env:B" })
        ]
      })
      const secretValues = [{ name: "API_TOKEN", value: value("tok-5e1f") }, {
        name: "B",
        value: value("bee")
      }]
      yield* start("sec", { secretValues })
      const read = yield* exec("sec", sh('cat run/secrets/API_TOKEN; echo; cat "$MICROAGENT_SECRETS_DIR/B"'))
      assert.strictEqual(read.stdout, "tok-5e1f\nbee")
      const root = (yield* store.get("sec")).rootfsPath
      const dir = NodePath.join(root, "run", "secrets")
      assert.strictEqual(NodeFs.statSync(dir).mode & 0o777, 0o700)
      assert.strictEqual(NodeFs.statSync(NodePath.join(dir, "API_TOKEN")).mode & 0o777, 0o400)
      // Only in the workspace's own directory (0700), and never in the record or the log.
      assert.strictEqual(NodeFs.statSync(home.workspaceDir("sec")).mode & 0o777, 0o700)
      assert.deepStrictEqual(holding(home.root, "tok-5e1f"), [NodePath.join(dir, "API_TOKEN")])

      yield* halt("sec")
      assert.isFalse(NodeFs.existsSync(dir), "removed with the VM")
      assert.deepStrictEqual(holding(home.root, "tok-5e1f"), [])
      yield* start("sec", { secretValues })
      assert.strictEqual((yield* exec("sec", sh("cat run/secrets/B"))).stdout, "bee")
      yield* kill("sec")
      assert.isFalse(NodeFs.existsSync(dir), "removed when the VM is killed too")
      assert.deepStrictEqual(holding(home.root, "tok-5e1f"), [])
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("a symlink the guest left at /run stays inside its root", () =>
    Effect.gen(function*() {
      const store = yield* StateStore
      const outside = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-outside-"))
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => NodeFs.rmSync(outside, { recursive: true, force: true }))
      )
      yield* create({
        image: "alpine",
        name: "lnk",
        secrets: [new SecretRef({ name: "S", source: "env:S" })]
      })
      const root = (yield* store.get("lnk")).rootfsPath
      // Absolute: in a guest it names the guest's own directory, never the host's.
      NodeFs.symlinkSync(outside, NodePath.join(root, "run"))
      yield* start("lnk", { secretValues: [{ name: "S", value: value("stay-in") }] })
      assert.deepStrictEqual(NodeFs.readdirSync(outside), [])
      const inside = NodePath.join(root, outside.slice(1), "secrets", "S")
      assert.strictEqual(NodeFs.readFileSync(inside, "utf8"), "stay-in")
      yield* halt("lnk")
      assert.isFalse(NodeFs.existsSync(inside))
      assert.deepStrictEqual(NodeFs.readdirSync(outside), [])
    }).pipe(Effect.provide(fakeEnvironment)))
})

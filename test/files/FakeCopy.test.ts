/**
 * `cp` on the fake backend, whose disk is the host directory standing for the guest's root: in and out,
 * running (`via: channel`) and stopped (`via: offline`), with the rules of a real backend. Guest paths
 * resolve inside the root (`..` refused, symlinks followed inside it only), missing paths and parents
 * are `not_found`, modes are kept without set-id bits, and a path on a mounted volume is reached while
 * the workspace runs and refused while it is stopped.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Option } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { ExecRequest } from "../../src/domain/Exec.ts"
import { Mount } from "../../src/domain/Workspace.ts"
import { copyIn, copyOut } from "../../src/programs/Cp.ts"
import { create } from "../../src/programs/Create.ts"
import { exec } from "../../src/programs/Exec.ts"
import { halt } from "../../src/programs/Halt.ts"
import { start } from "../../src/programs/Start.ts"
import { volumeCreate } from "../../src/programs/Volume.ts"
import { volumeDirectoryOf } from "../../src/services/Hypervisor.ts"
import { StateStore } from "../../src/services/StateStore.ts"
import { fakeEnvironment } from "../support/fakeEnvironment.ts"

const sh = (script: string) => new ExecRequest({ argv: ["sh", "-c", script] })

const failureTag = (exit: Exit.Exit<unknown, { readonly _tag: string }>) =>
  Exit.isFailure(exit) ? Option.getOrThrow(Cause.failureOption(exit.cause))._tag : "success"

const scratch = Effect.acquireRelease(
  Effect.sync(() => NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-fakecp-"))),
  (dir) => Effect.sync(() => NodeFs.rmSync(dir, { recursive: true, force: true }))
)

/** A host tree: `top/a` (0640), `top/run` (setuid, 04755), `top/sub/b`, `top/link -> a`. */
const hostTree = (dir: string) => {
  const top = NodePath.join(dir, "top")
  NodeFs.mkdirSync(NodePath.join(top, "sub"), { recursive: true })
  NodeFs.writeFileSync(NodePath.join(top, "a"), "alpha\n", { mode: 0o640 })
  NodeFs.chmodSync(NodePath.join(top, "a"), 0o640)
  NodeFs.writeFileSync(NodePath.join(top, "run"), "#!/bin/sh\n")
  NodeFs.chmodSync(NodePath.join(top, "run"), 0o4755)
  NodeFs.writeFileSync(NodePath.join(top, "sub", "b"), "beta\n")
  NodeFs.symlinkSync("a", NodePath.join(top, "link"))
  return top
}

describe("cp on the fake backend", () => {
  for (const running of [true, false]) {
    it.scopedLive(`copies files and trees in and out of a ${running ? "running" : "stopped"} workspace`, () =>
      Effect.gen(function*() {
        const store = yield* StateStore
        const dir = yield* scratch
        const top = hostTree(dir)
        yield* create({ image: "alpine", name: "cp1" })
        if (running) yield* start("cp1")
        const root = (yield* store.get("cp1")).rootfsPath
        const via = running ? "channel" : "offline"

        const file = yield* copyIn("cp1", NodePath.join(top, "a"), "/tmp")
        assert.deepStrictEqual([file.guestPath, file.via, file.kind, file.bytes], ["/tmp/a", via, "file", 6])
        assert.strictEqual(NodeFs.readFileSync(NodePath.join(root, "tmp", "a"), "utf8"), "alpha\n")
        assert.strictEqual(NodeFs.statSync(NodePath.join(root, "tmp", "a")).mode & 0o7777, 0o640)
        const renamed = yield* copyIn("cp1", NodePath.join(top, "a"), "/root/renamed")
        assert.strictEqual(renamed.guestPath, "/root/renamed")

        const tree = yield* copyIn("cp1", top, "/root")
        assert.deepStrictEqual([tree.guestPath, tree.kind, tree.via], ["/root/top", "directory", via])
        assert.strictEqual(
          NodeFs.readFileSync(NodePath.join(root, "root", "top", "sub", "b"), "utf8"),
          "beta\n"
        )
        assert.strictEqual(NodeFs.readlinkSync(NodePath.join(root, "root", "top", "link")), "a")
        assert.strictEqual(
          NodeFs.statSync(NodePath.join(root, "root", "top", "run")).mode & 0o7777,
          0o755,
          "set-id bits are dropped"
        )
        if (running) {
          const seen = yield* exec("cp1", sh("cat root/top/sub/b tmp/a"))
          assert.strictEqual(seen.stdout, "beta\nalpha\n")
        }

        const out = NodePath.join(dir, "out")
        NodeFs.mkdirSync(out)
        const back = yield* copyOut("cp1", "/tmp/a", out)
        assert.deepStrictEqual([back.hostPath, back.kind, back.via], [NodePath.join(out, "a"), "file", via])
        assert.strictEqual(NodeFs.readFileSync(NodePath.join(out, "a"), "utf8"), "alpha\n")
        assert.strictEqual(NodeFs.statSync(NodePath.join(out, "a")).mode & 0o777, 0o640)
        const backTree = yield* copyOut("cp1", "/root/top", out)
        assert.deepStrictEqual([backTree.hostPath, backTree.kind], [NodePath.join(out, "top"), "directory"])
        assert.strictEqual(NodeFs.readFileSync(NodePath.join(out, "top", "sub", "b"), "utf8"), "beta\n")
        assert.strictEqual(NodeFs.readlinkSync(NodePath.join(out, "top", "link")), "a")
        // A tree is never merged into what is on the host.
        assert.strictEqual(failureTag(yield* Effect.exit(copyOut("cp1", "/root/top", out))), "Conflict")

        // Missing paths and parents, `..`, and the root itself.
        assert.strictEqual(failureTag(yield* Effect.exit(copyOut("cp1", "/nope", out))), "NotFound")
        assert.strictEqual(
          failureTag(yield* Effect.exit(copyIn("cp1", NodePath.join(top, "a"), "/no/such/dir/a"))),
          "NotFound"
        )
        assert.strictEqual(
          failureTag(yield* Effect.exit(copyIn("cp1", NodePath.join(top, "a"), "/tmp/../../etc/x"))),
          "InvalidInput"
        )
        assert.strictEqual(failureTag(yield* Effect.exit(copyOut("cp1", "/", out))), "InvalidInput")
        assert.strictEqual(
          failureTag(yield* Effect.exit(copyIn("cp1", NodePath.join(dir, "absent"), "/tmp"))),
          "NotFound"
        )
        // A tree copied again where it is: a running guest merges it (tar -x), a stopped disk refuses.
        const again = yield* Effect.exit(copyIn("cp1", top, "/root"))
        assert.strictEqual(failureTag(again), running ? "success" : "Conflict")
        if (running) yield* halt("cp1")
      }).pipe(Effect.provide(fakeEnvironment)))
  }

  it.scopedLive("symlinks in the guest's root never lead a copy out of it", () =>
    Effect.gen(function*() {
      const store = yield* StateStore
      const dir = yield* scratch
      const hostSecret = NodePath.join(dir, "host-only.txt")
      NodeFs.writeFileSync(hostSecret, "host data\n")
      const victim = NodePath.join(dir, "victim")
      NodeFs.mkdirSync(victim)
      yield* create({ image: "alpine", name: "esc" })
      yield* start("esc")
      const root = (yield* store.get("esc")).rootfsPath
      // What a guest can make: links to absolute paths and up the tree.
      NodeFs.symlinkSync(dir, NodePath.join(root, "abs"))
      NodeFs.symlinkSync("../../../../../../../..", NodePath.join(root, "up"))
      NodeFs.symlinkSync(hostSecret, NodePath.join(root, "tmp", "leak"))
      const source = NodePath.join(dir, "payload")
      NodeFs.writeFileSync(source, "payload\n")

      // Into the guest: resolved as the guest would, inside the root.
      assert.strictEqual(failureTag(yield* Effect.exit(copyIn("esc", source, "/abs/victim/p"))), "NotFound")
      yield* copyIn("esc", source, `/up${victim}`).pipe(Effect.exit)
      assert.deepStrictEqual(NodeFs.readdirSync(victim), [], "nothing written outside the root")
      NodeFs.mkdirSync(NodePath.join(root, victim.slice(1)), { recursive: true })
      const landed = yield* copyIn("esc", source, `/up${victim}`)
      assert.strictEqual(landed.guestPath, `/up${victim}/payload`)
      assert.isTrue(NodeFs.existsSync(NodePath.join(root, victim.slice(1), "payload")))
      assert.deepStrictEqual(NodeFs.readdirSync(victim), [])

      // Out of the guest: a link to a host file reads the guest's path of that name, which is absent.
      const out = NodePath.join(dir, "out")
      NodeFs.mkdirSync(out)
      assert.strictEqual(failureTag(yield* Effect.exit(copyOut("esc", "/tmp/leak", out))), "NotFound")
      assert.strictEqual(
        failureTag(yield* Effect.exit(copyOut("esc", "/abs/host-only.txt", out))),
        "NotFound"
      )
      assert.deepStrictEqual(NodeFs.readdirSync(out), [])
      // A loop is refused, not followed forever.
      NodeFs.symlinkSync("loop", NodePath.join(root, "loop"))
      assert.strictEqual(failureTag(yield* Effect.exit(copyOut("esc", "/loop", out))), "InvalidInput")
    }).pipe(Effect.provide(fakeEnvironment)))

  it.scopedLive("a mounted volume is reached while the workspace runs, refused while it is stopped", () =>
    Effect.gen(function*() {
      const dir = yield* scratch
      const source = NodePath.join(dir, "note")
      NodeFs.writeFileSync(source, "on the volume\n")
      const volume = yield* volumeCreate("cpvol", 16)
      yield* create({
        image: "alpine",
        name: "mnt",
        mounts: [new Mount({ kind: "volume", source: "cpvol", target: "/data", readOnly: false })]
      })
      yield* start("mnt")
      const copied = yield* copyIn("mnt", source, "/data")
      assert.strictEqual(copied.guestPath, "/data/note")
      assert.strictEqual(
        NodeFs.readFileSync(NodePath.join(volumeDirectoryOf(volume.path), "note"), "utf8"),
        "on the volume\n"
      )
      const out = NodePath.join(dir, "out")
      yield* copyOut("mnt", "/data/note", out)
      assert.strictEqual(NodeFs.readFileSync(out, "utf8"), "on the volume\n")
      yield* halt("mnt")
      assert.strictEqual(failureTag(yield* Effect.exit(copyIn("mnt", source, "/data/x"))), "Unsupported")
      assert.strictEqual(failureTag(yield* Effect.exit(copyOut("mnt", "/data/note", dir))), "Unsupported")
    }).pipe(Effect.provide(fakeEnvironment)))
})

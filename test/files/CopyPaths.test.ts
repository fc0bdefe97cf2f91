/**
 * Path rules of `cp` and `--output`: which side is the workspace, guest paths that are refused, where a
 * copy lands, and the safe host-side extraction that keeps a hostile tree inside its target.
 */
import { Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterEach, assert, describe, it } from "vitest"
import { InvalidInput } from "../../src/domain/Errors.ts"
import { Mount, type Workspace } from "../../src/domain/Workspace.ts"
import * as HostTreesLive from "../../src/layers/rootfs/HostTreesLive.ts"
import { onRootDisk } from "../../src/programs/Cp.ts"
import {
  checkGuestPath,
  guestBasename,
  parseEndpoint,
  planCopy
} from "../../src/programs/internal/CopyPaths.ts"
import { extractHostTree, hostDestination } from "../../src/programs/internal/HostWrite.ts"
import { parseOutput, parseOutputs } from "../../src/programs/internal/Outputs.ts"
import { tarArchive, tarFile, tarHeader } from "../support/tar.ts"

const dirs: Array<string> = []
const temp = () => {
  const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-cpaths-"))
  dirs.push(dir)
  return dir
}
afterEach(() => {
  for (const dir of dirs.splice(0)) NodeFs.rmSync(dir, { recursive: true, force: true })
})

const extract = (target: string, top: string, bytes: Buffer) =>
  Effect.runPromise(
    Effect.either(extractHostTree(target, top, (sink) => Effect.sync(() => sink.write(bytes)))).pipe(
      Effect.provide(HostTreesLive.layer)
    )
  )

describe("cp endpoints", () => {
  it("tells workspace paths from host paths", () => {
    assert.deepStrictEqual(parseEndpoint("ws:/etc/passwd"), {
      _tag: "Guest",
      workspace: "ws",
      path: "/etc/passwd"
    })
    assert.deepStrictEqual(parseEndpoint("./a:b"), { _tag: "Host", path: "./a:b" })
    assert.deepStrictEqual(parseEndpoint("/abs/x:y"), { _tag: "Host", path: "/abs/x:y" })
    assert.deepStrictEqual(parseEndpoint("C:\\Users\\x"), { _tag: "Host", path: "C:\\Users\\x" })
    assert.deepStrictEqual(parseEndpoint("plain"), { _tag: "Host", path: "plain" })
    assert.deepStrictEqual(parseEndpoint(":x"), { _tag: "Host", path: ":x" })
  })

  it("needs exactly one workspace side, and makes the host side absolute", () => {
    assert.instanceOf(planCopy("a:/x", "b:/y", "/"), InvalidInput)
    assert.instanceOf(planCopy("./a", "./b", "/"), InvalidInput)
    assert.deepStrictEqual(planCopy("rel/file", "ws:/tmp", "/home/u"), {
      workspace: "ws",
      direction: "in",
      hostPath: "/home/u/rel/file",
      guestPath: "/tmp"
    })
    assert.deepStrictEqual(planCopy("ws:/var//log/./x", ".", "/home/u"), {
      workspace: "ws",
      direction: "out",
      hostPath: "/home/u",
      guestPath: "/var/log/x"
    })
  })

  it("refuses relative guest paths, .. components, NUL and newlines", () => {
    for (const bad of ["", "relative", "/a/../b", "/..", "/a/..", "/a\nb", "/a\0b"]) {
      assert.instanceOf(checkGuestPath(bad), InvalidInput, JSON.stringify(bad))
    }
    assert.strictEqual(checkGuestPath("/a/..b/c"), "/a/..b/c")
    assert.instanceOf(guestBasename("/"), InvalidInput)
    assert.strictEqual(guestBasename("/srv/tree"), "tree")
  })

  it("parses --output NAME=/path and refuses bad ones", async () => {
    assert.deepStrictEqual({ ...(parseOutput("report=/root/r.txt") as object) }, {
      name: "report",
      path: "/root/r.txt"
    })
    for (const bad of ["noequals", "=/x", "x=relative", "../x=/a", "a/b=/a", "a=/root/../etc", "a=/"]) {
      assert.instanceOf(parseOutput(bad), InvalidInput, bad)
    }
    const twice = await Effect.runPromise(Effect.either(parseOutputs(["a=/x", "a=/y"])))
    assert.strictEqual(twice._tag, "Left")
  })
})

describe("host destinations", () => {
  it("keeps the guest basename in a directory, and refuses to merge a tree into something", async () => {
    const dir = temp()
    assert.strictEqual(await Effect.runPromise(hostDestination(dir, "x", false)), NodePath.join(dir, "x"))
    assert.strictEqual(
      await Effect.runPromise(hostDestination(NodePath.join(dir, "y"), "x", true)),
      NodePath.join(dir, "y")
    )
    NodeFs.mkdirSync(NodePath.join(dir, "x"))
    const merged = await Effect.runPromise(Effect.either(hostDestination(dir, "x", true)))
    assert.strictEqual(merged._tag === "Left" && merged.left._tag, "Conflict")
    const noParent = await Effect.runPromise(
      Effect.either(hostDestination(NodePath.join(dir, "a", "b"), "x", false))
    )
    assert.strictEqual(noParent._tag === "Left" && noParent.left._tag, "NotFound")
  })

  it("extracts a tree inside its target only: .., absolute names and symlinked parents are refused", async () => {
    const outer = temp()
    const hostile = [
      tarArchive(tarHeader("top/", "5"), tarFile("top/../escaped", "x")),
      tarArchive(tarHeader("top/", "5"), tarFile("/top/abs", "x")),
      tarArchive(
        tarHeader("top/", "5"),
        tarHeader("top/link", "2", 0, "../.."),
        tarFile("top/link/escaped", "x")
      )
    ]
    for (const [i, bytes] of hostile.entries()) {
      const target = NodePath.join(outer, `t${i}`)
      const result = await extract(target, "top", bytes)
      assert.strictEqual(result._tag, "Left", `archive ${i}`)
      assert.deepStrictEqual(NodeFs.readdirSync(outer), [], `archive ${i} left nothing behind`)
    }
    // A link to / resolves as the guest sees it, at the staging root: what lands there is dropped.
    const rooted = await extract(
      NodePath.join(outer, "rooted"),
      "top",
      tarArchive(
        tarHeader("top/", "5"),
        tarHeader("top/link", "2", 0, "/"),
        tarFile("top/link/ma-cp-escaped", "x")
      )
    )
    assert.strictEqual(rooted._tag, "Right")
    assert.deepStrictEqual(NodeFs.readdirSync(NodePath.join(outer, "rooted")), ["link"])
    assert.isFalse(NodeFs.existsSync("/ma-cp-escaped"))
    NodeFs.rmSync(NodePath.join(outer, "rooted"), { recursive: true })
    // Entries beside the top are dropped; a link to outside stays an inert link.
    const ok = await extract(
      NodePath.join(outer, "good"),
      "top",
      tarArchive(
        tarHeader("top/", "5"),
        tarFile("top/f", "inside"),
        tarHeader("top/out", "2", 0, "/etc/passwd"),
        tarFile("other", "dropped")
      )
    )
    assert.strictEqual(ok._tag, "Right")
    assert.deepStrictEqual(NodeFs.readdirSync(outer), ["good"])
    assert.strictEqual(NodeFs.readFileSync(NodePath.join(outer, "good", "f"), "utf8"), "inside")
    assert.strictEqual(NodeFs.readlinkSync(NodePath.join(outer, "good", "out")), "/etc/passwd")
  })
})

describe("offline copies", () => {
  it("refuse paths on attached disks, which only the running guest sees", async () => {
    const workspace = {
      name: "ws",
      mounts: [new Mount({ kind: "volume", source: "data", target: "/data", readOnly: false })]
    } as unknown as Workspace
    for (const path of ["/data", "/data/x", "/data/deep/er"]) {
      const refused = await Effect.runPromise(Effect.either(onRootDisk(workspace, path)))
      assert.strictEqual(refused._tag === "Left" && refused.left._tag, "Unsupported", path)
    }
    for (const path of ["/", "/database", "/root/data"]) {
      assert.strictEqual(
        (await Effect.runPromise(Effect.either(onRootDisk(workspace, path))))._tag,
        "Right",
        path
      )
    }
  })
})

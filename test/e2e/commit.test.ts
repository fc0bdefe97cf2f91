/**
 * `commit` end to end on one real microVM: a workspace of the built-in busybox image is changed by exec
 * (a file added, one deleted, one setuid, one owned by 1000:1000, a hard link, a symlink, a sticky
 * directory) and given an xattr offline, halted and committed; the second commit has the same digest;
 * the image is pushed to a loopback registry, checked by skopeo and umoci, pulled into a fresh state
 * directory and run: every change is there. `--diff` stacks one layer of just the changes (with a
 * whiteout) on the base's layers. A running workspace is refused.
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import * as NodeZlib from "node:zlib"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { cliAsync, type CliResult, errorOf, stopRuntime } from "../support/cli.ts"
import { umociUnpack } from "../support/images.ts"
import { inspectImage, requireTool, skopeo, startRegistry, type TestRegistry } from "../support/registry.ts"

const builtin = "microagent.local/busybox:latest"
const secretValue = `commit-secret-${process.pid}-f00d`

let registry: TestRegistry
let scratch: string
let home: string
let fresh: string

const ma = (args: ReadonlyArray<string>, stateDir = home, env: Record<string, string> = {}) =>
  cliAsync([...args], { stateDir, env: { MICROAGENT_OUTPUT: "json", ...env } })

const json = <A = any>(result: CliResult): A => {
  assert.strictEqual(result.code, 0, `${result.stdout}\n${result.stderr}`)
  return JSON.parse(result.stdout) as A
}

interface Committed {
  readonly ref: string
  readonly digest: string
  readonly layers: number
  readonly layer: { readonly digest: string; readonly entries: number }
  readonly push?: { readonly digest: string }
}

const blob = (stateDir: string, digest: string) =>
  NodePath.join(stateDir, "images", "blobs", "sha256", digest.replace(/^sha256:/, ""))

/** `tar -tv` of a layer blob, owners numeric: `mode uid/gid ... name[ link to X | -> X]`. */
const listLayer = (file: string) =>
  NodeChild.execFileSync("tar", ["--numeric-owner", "-tvzf", file], { encoding: "utf8" }).trim().split("\n")

const lineFor = (lines: ReadonlyArray<string>, name: string) =>
  lines.find((l) => l.split(/\s+/).slice(5).join(" ").split(" ")[0] === name)

beforeAll(async () => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("debugfs", "e2fsprogs")
  requireTool("skopeo", "skopeo")
  requireTool("umoci", "umoci")
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-commit-e2e-"))
  home = NodePath.join(scratch, "home")
  fresh = NodePath.join(scratch, "fresh")
  registry = await startRegistry()
}, 120_000)

afterAll(async () => {
  if (home !== undefined) {
    await ma(["kill", "cw"]).catch(() => undefined)
    stopRuntime(home)
  }
  if (fresh !== undefined) stopRuntime(fresh)
  await registry?.stop()
  if (scratch !== undefined) NodeFs.rmSync(scratch, { recursive: true, force: true })
}, 120_000)

describe("commit", () => {
  let committed: Committed
  const target = () => `${registry.host}/commit/cw:1`

  it("refuses a running workspace, then commits the halted one reproducibly", async () => {
    json(
      await ma(["create", "--image", builtin, "--secret", "TOKEN=env:MA_COMMIT_TOKEN", "cw"], home, {
        MA_COMMIT_TOKEN: secretValue
      })
    )
    json(await ma(["start", "cw"], home, { MA_COMMIT_TOKEN: secretValue }))
    const script = [
      "set -e",
      "echo added > /root/added.txt",
      "rm /etc/hostname",
      "printf x > /usr/bin/suid-tool",
      "chmod 4755 /usr/bin/suid-tool",
      "echo owned > /home/owned",
      "chown 1000:1000 /home/owned",
      "chmod 640 /home/owned",
      "ln /root/added.txt /root/hardlink",
      "ln -s /root/added.txt /root/symlink",
      "mkdir /srv",
      "chmod 1777 /srv",
      "test -s /run/secrets/TOKEN"
    ].join("\n")
    const changed = json(await ma(["exec", "cw", "--", "sh", "-c", script]))
    assert.strictEqual(changed.result.exitCode, 0, changed.result.stderr)

    const running = await ma(["commit", "cw", target()])
    assert.notStrictEqual(running.code, 0)
    const refused = errorOf(running).error
    assert.strictEqual(refused.kind, "conflict")
    assert.include(refused.remediation, "microagent halt cw")

    json(await ma(["halt", "cw"]))
    // busybox has no setfattr: the xattr is set on the halted disk.
    const rootfs = json(await ma(["inspect", "cw"])).workspace.rootfsPath as string
    NodeChild.execFileSync("debugfs", ["-w", "-R", "ea_set /root/added.txt user.origin committed", rootfs], {
      stdio: "ignore"
    })

    committed = json<Committed>(await ma(["commit", "--message", "changes by exec", "cw", target()]))
    assert.strictEqual(committed.ref, target())
    assert.strictEqual(committed.layers, 1)
    const again = json<Committed>(
      await ma(["commit", "--push", "--message", "changes by exec", "cw", target()])
    )
    assert.strictEqual(again.digest, committed.digest, "the same content gives the same digest")
    assert.strictEqual(again.push?.digest, committed.digest)

    const lines = listLayer(blob(home, committed.layer.digest))
    const names = lines.map((l) => l.split(/\s+/)[5])
    assert.match(lineFor(lines, "usr/bin/suid-tool")!, /^-rwsr-xr-x 0\/0 /)
    assert.match(lineFor(lines, "home/owned")!, /^-rw-r----- 1000\/1000 /)
    assert.match(lineFor(lines, "srv/")!, /^drwxrwxrwt 0\/0 /)
    assert.match(lineFor(lines, "root/hardlink")!, /^h.* link to root\/added\.txt$/)
    assert.match(lineFor(lines, "root/symlink")!, /^l.* -> \/root\/added\.txt$/)
    assert.notInclude(names, "etc/hostname")
    // What the runtime put there for itself, and the filesystem's own directory, are not committed.
    assert.isFalse(
      names.some((n) => n?.startsWith("lost+found") || n?.startsWith("run/secrets")),
      names.join(" ")
    )
    assert.isFalse(names.some((n) => /^(dev|proc|sys|run|tmp)\/./.test(n ?? "")), names.join(" "))
    // The agent writes resolv.conf at boot; the base image has none, so neither has the commit.
    assert.notInclude(names, "etc/resolv.conf")
    const raw = NodeZlib.gunzipSync(NodeFs.readFileSync(blob(home, committed.layer.digest)))
    assert.isFalse(raw.includes(secretValue), "the secret's value is not in the layer")
    assert.isTrue(raw.includes("SCHILY.xattr.user.origin=committed"), "the xattr is a pax record")

    const config = JSON.parse(
      NodeFs.readFileSync(
        blob(home, JSON.parse(NodeFs.readFileSync(blob(home, committed.digest), "utf8")).config.digest),
        "utf8"
      )
    )
    assert.deepStrictEqual(config.config.Cmd, ["/bin/sh"])
    assert.deepStrictEqual(config.history.map((h: { comment?: string }) => h.comment), ["changes by exec"])
    assert.strictEqual(config.history[0].created_by, "microagent commit")
  }, 600_000)

  it("is what skopeo and umoci see in the registry", () => {
    const inspected = inspectImage(registry, "commit/cw:1") as { Digest: string; Layers: Array<string> }
    assert.strictEqual(inspected.Digest, committed.digest)
    assert.deepStrictEqual(inspected.Layers, [committed.layer.digest])
    const layout = NodePath.join(scratch, "layout")
    skopeo(["copy", "--src-tls-verify=false", `docker://${target()}`, `oci:${layout}:cw`])
    const tree = umociUnpack(layout, "cw", NodePath.join(scratch, "bundle"))
    const rootfs = NodePath.join(scratch, "bundle", "rootfs")
    assert.strictEqual(NodeFs.readFileSync(NodePath.join(rootfs, "root/added.txt"), "utf8"), "added\n")
    assert.strictEqual(
      NodeFs.statSync(NodePath.join(rootfs, "root/hardlink")).ino,
      NodeFs.statSync(NodePath.join(rootfs, "root/added.txt")).ino
    )
    assert.deepStrictEqual(tree.get("/root/symlink"), {
      type: "symlink",
      mode: 0o777,
      uid: 0,
      gid: 0,
      link: "/root/added.txt"
    })
    assert.isUndefined(tree.get("/etc/hostname"))
    const owners = (path: string) => {
      const e = tree.get(path)
      return e === undefined ? undefined : [e.type, e.mode, e.uid, e.gid]
    }
    assert.deepStrictEqual(owners("/home/owned"), ["file", 0o640, 1000, 1000])
    assert.deepStrictEqual(owners("/usr/bin/suid-tool"), ["file", 0o4755, 0, 0])
    assert.deepStrictEqual(owners("/srv"), ["dir", 0o1777, 0, 0])
  }, 300_000)

  it("pulls into a fresh state directory and runs with every change", async () => {
    // Workspaces get the store's default policy, which strips setuid bits from image files: the bit is
    // checked in the baseline `image pull --allow-guest-setuid` builds.
    const ran = json(
      await ma([
        "run",
        target(),
        "--",
        "sh",
        "-c",
        [
          "cat /root/added.txt",
          "stat -c '%a %u %g %n' /usr/bin/suid-tool /home/owned /srv",
          "test $(stat -c %i /root/added.txt) = $(stat -c %i /root/hardlink) && echo same-inode",
          "readlink /root/symlink",
          "test -e /etc/hostname || echo hostname-gone"
        ].join("; ")
      ], fresh)
    )
    assert.strictEqual(
      ran.result.stdout,
      "added\n755 0 0 /usr/bin/suid-tool\n640 1000 1000 /home/owned\n1777 0 0 /srv\nsame-inode\n/root/added.txt\nhostname-gone\n",
      ran.result.stderr
    )
    const pulled = json(await ma(["image", "pull", "--allow-guest-setuid", target()], fresh))
    assert.strictEqual(pulled.digest, committed.digest)
    const debugfs = (command: string) =>
      NodeChild.execFileSync("debugfs", ["-R", command, pulled.baseline], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "ignore"]
      })
    assert.match(debugfs("stat /usr/bin/suid-tool"), /Mode:\s+04755/)
    assert.include(debugfs("ea_get /root/added.txt user.origin"), "committed")
  }, 600_000)

  it("--diff stacks one layer of just the changes on the base's layers", async () => {
    const base = json(await ma(["image", "inspect", builtin]))
    const diffed = json<Committed>(await ma(["commit", "--diff", "cw", "localhost/commit/cw:diff"]))
    assert.strictEqual(diffed.layers, base.layers.length + 1)
    const record = json(await ma(["image", "inspect", "localhost/commit/cw:diff"]))
    assert.deepStrictEqual(record.layers.slice(0, -1), base.layers, "the base's blobs, unchanged")
    const names = listLayer(blob(home, diffed.layer.digest)).map((l) => l.split(/\s+/)[5]).sort()
    assert.deepStrictEqual(names, [
      "etc/",
      "etc/.wh.hostname",
      "home/",
      "home/owned",
      "root/",
      "root/added.txt",
      "root/hardlink",
      "root/symlink",
      "srv/",
      "usr/bin/",
      "usr/bin/suid-tool"
    ])
  }, 300_000)
})

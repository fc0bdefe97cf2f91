/**
 * Warm starts on real QEMU microVMs through the CLI: the first start of a shape builds a template, the
 * next ones restore it instead of booting. A warm workspace is its own (hostname, RNG, disk), gets its
 * secrets, files and published ports, reaches the egress mediator, mounts its own volumes and disks in
 * place of the template's stand-ins; `--cold` and anything the template cannot hold boot; templates are
 * listed and pruned, and a pruned one is built again; one that does not restore is dropped and the
 * start boots, mediated as ever.
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeNet from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { defaultImage } from "../../src/layers/image/BuiltinImages.ts"
import { cliAsync, type CliResult, stopRuntime } from "../support/cli.ts"
import { qemuProcessesMentioning } from "../support/kernel.ts"
import { freePort, requireTool } from "../support/registry.ts"

let stateDir: string

const env = { MICROAGENT_BACKEND: "qemu" }
const ma = (args: ReadonlyArray<string>, extraEnv: Record<string, string> = {}): Promise<CliResult> =>
  cliAsync(args, { stateDir, env: { ...env, ...extraEnv } })
const ok = async (args: ReadonlyArray<string>, extraEnv: Record<string, string> = {}) => {
  const result = await ma(args, extraEnv)
  assert.strictEqual(result.code, 0, `${args.join(" ")}: ${result.stderr}`)
  return result
}
const json = (result: CliResult) => JSON.parse(result.stdout)
const sh = async (name: string, script: string) =>
  json(await ok(["exec", name, "--", "sh", "-c", script])).result.stdout as string

const warmEvent = async (name: string): Promise<string | undefined> => {
  const { events } = json(await ok(["events", name, "--json"])) as {
    events: Array<{ type: string; detail: string }>
  }
  return events.find((e) => e.type === "warm")?.detail
}

const templates = async () =>
  json(await ok(["template", "list", "--json"])) as Array<{
    manifest: { key: string; imageRef: string; shape: { network: string; memoryMiB: number } }
    stale?: string
  }>

beforeAll(() => {
  requireTool("qemu-system-x86_64", "qemu-system-x86")
  requireTool("mke2fs", "e2fsprogs")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-warm-"))
})

afterAll(() => {
  stopRuntime(stateDir)
  for (const pid of qemuProcessesMentioning(`${stateDir}/`)) process.kill(pid, "SIGKILL")
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("warm starts on real microVMs", () => {
  it(
    "the first start builds the template, the next restore it, each workspace its own",
    async () => {
      assert.deepStrictEqual(await templates(), [])
      await ok(["create", "--image", defaultImage, "--egress", "off", "w1"])
      await ok(["start", "w1"])
      assert.match((await warmEvent("w1")) ?? "", /^restored template [0-9a-f]{24} \(built by this start\)/)
      const [template] = await templates()
      assert.strictEqual(template?.manifest.imageRef, defaultImage)
      assert.strictEqual(template?.manifest.shape.network, "user")
      assert.isUndefined(template?.stale)
      // Nothing of the build is left running: only w1's VMM.
      assert.lengthOf(qemuProcessesMentioning(`${stateDir}/`), 1)

      const port = await freePort()
      await ok([
        "create",
        "--image",
        defaultImage,
        "--egress",
        "off",
        "-p",
        `127.0.0.1:${port}:8080`,
        "--secret",
        "TOKEN=env:WARM_TOKEN",
        "w2"
      ], { WARM_TOKEN: "warm-secret" })
      await ok(["start", "w2"], { WARM_TOKEN: "warm-secret" })
      assert.strictEqual(
        await warmEvent("w2"),
        `restored template ${template!.manifest.key}; clock set, rng reseeded`
      )
      // Its own name, its secret, a clock within seconds of the host's.
      assert.strictEqual((await sh("w2", "hostname")).trim(), "w2")
      // Its log shows the template's boot, then the restore.
      const log = (await ok(["logs", "w2"])).stdout
      assert.include(log, "microagent-agent: ready at")
      assert.match(log, /microagent: restored at \d{4}-/)
      assert.strictEqual(await sh("w2", "cat /run/secrets/TOKEN"), "warm-secret")
      const guestNow = Number((await sh("w2", "date +%s")).trim())
      assert.isBelow(Math.abs(guestNow - Date.now() / 1000), 5)
      // Random numbers differ between restores of the same memory.
      const random = [
        await sh("w1", "head -c 16 /dev/urandom | od -An -tx1"),
        await sh("w2", "head -c 16 /dev/urandom | od -An -tx1")
      ]
      assert.notStrictEqual(random[0], random[1])
      // Disks are independent.
      await sh("w1", "echo one > /root/mine && sync")
      assert.strictEqual((await sh("w2", "cat /root/mine 2>/dev/null || echo absent")).trim(), "absent")
      // The published port reaches a server in the restored guest.
      await sh("w2", "(nc -l -p 8080 -e echo served-warm >/dev/null 2>&1 &)")
      const served = await new Promise<string>((resolve, reject) => {
        const attempt = (left: number) => {
          const socket = NodeNet.connect(port, "127.0.0.1")
          let data = ""
          socket.on("data", (chunk) => (data += chunk.toString()))
          // Until nc listens, the NAT accepts and then closes the connection with nothing sent.
          socket.on(
            "end",
            () => data === "" && left > 0 ? setTimeout(() => attempt(left - 1), 200) : resolve(data)
          )
          socket.on("error", (error) => left > 0 ? setTimeout(() => attempt(left - 1), 200) : reject(error))
        }
        attempt(25)
      })
      assert.strictEqual(served.trim(), "served-warm")
      await ok(["delete", "--force", "w1", "w2"])
    },
    300_000
  )

  it(
    "a mediated run is warm and reaches the mediator; --cold, a second start and a clone boot",
    async () => {
      // Default egress (the mediator's tap): the template, saved with no network behind its NIC, fits.
      const run = json(
        await ok([
          "run",
          "--json",
          defaultImage,
          "--",
          "sh",
          "-c",
          "hostname; nslookup example.com 2>&1; true"
        ])
      )
      assert.strictEqual(run.result.exitCode, 0)
      assert.match(run.result.stdout, /^run-/)
      // The mediator answered (a refusal or an address), rather than the query timing out.
      assert.notInclude(run.result.stdout, "timed out")
      assert.match(run.result.stdout, /Server:|server can't find|Can't find|Address/)

      await ok(["create", "--image", defaultImage, "--egress", "off", "c1"])
      await ok(["start", "--cold", "c1"])
      assert.isUndefined(await warmEvent("c1"))
      await ok(["halt", "c1"])
      await ok(["start", "c1"])
      assert.isUndefined(await warmEvent("c1"), "a second start boots the workspace's own disk")
      // A clone's first start boots the disk it copied, never a template's.
      await sh("c1", "echo kept > /root/kept && sync")
      await ok(["halt", "c1"])
      await ok(["clone", "c1", "c2"])
      await ok(["start", "c2"])
      assert.isUndefined(await warmEvent("c2"))
      assert.strictEqual(await sh("c2", "cat /root/kept"), "kept\n")
      await ok(["delete", "--force", "c2"])

      const volume = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-warm-vol-"))
      NodeFs.writeFileSync(NodePath.join(volume, "in.txt"), "from the host\n")
      const bundle = NodePath.join(volume, "in.tar")
      NodeChild.execFileSync("tar", ["-cf", bundle, "-C", volume, "in.txt"])
      const withVolume = json(
        await ok([
          "run",
          "--json",
          "--egress",
          "off",
          "-v",
          `${bundle}:/data:ro`,
          defaultImage,
          "--",
          "cat",
          "/data/in.txt"
        ])
      )
      assert.strictEqual(withVolume.result.stdout, "from the host\n")
      NodeFs.rmSync(volume, { recursive: true, force: true })
      await ok(["delete", "--force", "c1"])
    },
    300_000
  )

  it(
    "volumes and disks are warm: the template's stand-ins give way to each workspace's own disks",
    async () => {
      const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-warm-disks-"))
      NodeFs.writeFileSync(NodePath.join(dir, "in.txt"), "from the host\n")
      const bundle = NodePath.join(dir, "in.tar")
      NodeChild.execFileSync("tar", ["-cf", bundle, "-C", dir, "in.txt"])
      await ok(["volume", "create", "--size-mib", "48", "wvol"])
      const create = (name: string) =>
        ok([
          "create",
          "--image",
          defaultImage,
          "--egress",
          "off",
          "-v",
          "wvol:/work",
          "-v",
          `${bundle}:/data:ro`,
          name
        ])

      await create("d1")
      await ok(["start", "d1"])
      assert.match((await warmEvent("d1")) ?? "", /^restored template [0-9a-f]{24} \(built by this start\)/)
      const withDisks = (await templates()).filter((t) =>
        (t.manifest.shape as { disks?: number }).disks === 2
      )
      assert.lengthOf(withDisks, 1, "a template with two stand-ins, beside the one without")
      // Mounted as at a cold boot: the volume read-write at its full size, the bundle read-only.
      const mounts = await sh("d1", "grep -E ' /(work|data) ' /proc/mounts; df -k /work | tail -1")
      assert.match(mounts, /^\/dev\/vd[bc] \/work ext4 rw/m)
      assert.match(mounts, /^\/dev\/vd[bc] \/data ext4 ro/m)
      const blocks = Number(mounts.trim().split("\n").at(-1)!.trim().split(/\s+/)[1])
      assert.isAbove(blocks, 40 * 1024, `the volume's 48 MiB, not the stand-in's 0: ${mounts}`)
      assert.strictEqual(await sh("d1", "cat /data/in.txt"), "from the host\n")
      const denied = await ma(["exec", "d1", "--json", "--", "sh", "-c", "echo x > /data/new"])
      assert.notStrictEqual(json(denied).result.exitCode, 0, "the read-only bundle refuses writes")
      await sh("d1", "echo written-by-d1 > /work/f && sync")
      await ok(["halt", "d1"])

      // The same shape restores the same template, onto the volume as d1 left it.
      await create("d2")
      await ok(["start", "d2"])
      assert.match((await warmEvent("d2")) ?? "", /^restored template [0-9a-f]{24}; /)
      assert.strictEqual(await sh("d2", "cat /work/f"), "written-by-d1\n")
      await sh("d2", "echo written-by-d2 >> /work/f && sync")
      await ok(["halt", "d2"])
      await ok(["delete", "--force", "d1", "d2"])
      // And the volume keeps what both wrote, for a cold start too.
      const cold = json(
        await ok([
          "run",
          "--json",
          "--cold",
          "--egress",
          "off",
          "-v",
          "wvol:/w",
          defaultImage,
          "--",
          "cat",
          "/w/f"
        ])
      )
      assert.strictEqual(cold.result.stdout, "written-by-d1\nwritten-by-d2\n")
      NodeFs.rmSync(dir, { recursive: true, force: true })
    },
    300_000
  )

  it(
    "a workspace with its own addressing is warm: the template's guest takes its address, routes and resolver",
    async () => {
      // Behind QEMU's NAT (egress off) on a network of its own; the host's loopback is at its gateway.
      const server = NodeNet.createServer((socket) => socket.end("hello-through-the-nat\n"))
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
      const port = (server.address() as NodeNet.AddressInfo).port
      const spec = NodePath.join(stateDir, "addressed.yaml")
      NodeFs.writeFileSync(
        spec,
        "network:\n  ip: 10.88.0.20/24\n  gateway: 10.88.0.1\n  routes: ['203.0.113.0/24 via 10.88.0.254']\n"
      )
      await ok(["create", "--image", defaultImage, "--egress", "off", "--file", spec, "ad1"])
      await ok(["start", "ad1"])
      assert.match((await warmEvent("ad1")) ?? "", /^restored template [0-9a-f]{24}/)
      const out = await sh(
        "ad1",
        `ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; ip route | sort; cat /etc/resolv.conf; nc -w 5 10.88.0.1 ${port} </dev/null`
      )
      server.close()
      assert.include(out, "inet 10.88.0.20/24", out)
      assert.notInclude(out, "10.0.2.15", out)
      assert.include(out, "default via 10.88.0.1 dev eth0", out)
      assert.include(out, "203.0.113.0/24 via 10.88.0.254 dev eth0", out)
      assert.match(out, /^nameserver 10\.88\.0\.\d+$/m, out)
      assert.notInclude(out, "nameserver 10.0.2.3", out)
      assert.include(out, "hello-through-the-nat", out)
      await ok(["delete", "--force", "ad1"])
    },
    300_000
  )

  it(
    "a template that does not restore is dropped: the start boots with its own mediator, the next builds it again",
    async () => {
      // The default shape's template (built now if missing), then its device state damaged: QEMU refuses it.
      await ok(["create", "--image", defaultImage, "b0"])
      await ok(["start", "b0"])
      const key = /^restored template ([0-9a-f]{24})/.exec((await warmEvent("b0")) ?? "")?.[1]
      assert.isDefined(key, await warmEvent("b0"))
      await ok(["delete", "--force", "b0"])
      const before = await templates()
      NodeFs.writeFileSync(NodePath.join(stateDir, "templates", key!, "vm.state"), "damaged")
      await ok([
        "create",
        "--image",
        defaultImage,
        "--egress-lock-allowlist",
        "--egress-allow",
        "example.org",
        "b1"
      ])
      await ok(["start", "b1"])
      assert.match((await warmEvent("b1")) ?? "", new RegExp(`^template ${key} did not restore, booting: `))
      // The boot's mediator answers (REFUSED for a name off the allowlist): the restore's left with it.
      const out = await sh("b1", "nslookup example.com 2>&1; true")
      assert.match(out, /REFUSED/, out)
      const after = (await templates()).map((t) => t.manifest.key)
      assert.notInclude(after, key, "the damaged template is gone")
      assert.strictEqual(after.length, before.length - 1, "the others stay")
      await ok(["create", "--image", defaultImage, "b2"])
      await ok(["start", "b2"])
      assert.include((await warmEvent("b2")) ?? "", "built by this start")
      assert.strictEqual(await sh("b2", "echo warm-again"), "warm-again\n")
      await ok(["delete", "--force", "b1", "b2"])
    },
    300_000
  )

  it(
    "templates are pruned (all, or the stale ones) and built again by the next first start",
    async () => {
      const before = await templates()
      assert.isAbove(before.length, 0)
      const stale = json(await ok(["template", "prune", "--json"]))
      assert.deepStrictEqual(stale.removed, [], "nothing is stale while image and kernel are there")
      const pruned = json(await ok(["template", "prune", "--all", "--json"]))
      assert.strictEqual(pruned.removed.length, before.length)
      assert.isAbove(pruned.freedBytes, 0)
      assert.deepStrictEqual(await templates(), [])
      assert.deepStrictEqual(
        NodeFs.readdirSync(NodePath.join(stateDir, "templates")).filter((f) => !f.endsWith(".lock")),
        []
      )
      await ok(["create", "--image", defaultImage, "--egress", "off", "again"])
      await ok(["start", "again"])
      assert.include((await warmEvent("again")) ?? "", "built by this start")
      await ok(["delete", "--force", "again"])
    },
    300_000
  )

  it(
    "fork children outlive their deleted parent; a build killed with its runtime leaves no VMM or half template",
    async () => {
      await ok(["create", "--image", defaultImage, "--egress", "off", "p"])
      await ok(["start", "p"])
      await sh("p", "echo from-parent > /run/mark")
      const forked = json(await ok(["fork", "p", "--count", "2", "--json"]))
      await ok(["delete", "--force", "p"])
      for (const child of forked.children as Array<{ name: string }>) {
        assert.strictEqual(await sh(child.name, "cat /run/mark"), "from-parent\n", child.name)
        await ok(["delete", "--force", child.name])
      }

      // A first start of a new shape (384 MiB) builds its template; the runtime dies mid-build.
      await ok(["create", "--image", defaultImage, "--egress", "off", "--memory", "384", "k1"])
      const starting = ma(["start", "k1"])
      const templateVmm = () =>
        qemuProcessesMentioning(`${stateDir}/run/.template-`).filter((pid) =>
          NodeFs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("384")
        )
      const deadline = Date.now() + 60_000
      while (templateVmm().length === 0) {
        if (Date.now() > deadline) throw new Error("the template build never started its VM")
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      const runtime = Number(
        NodeFs.readFileSync(NodePath.join(stateDir, "run", "runtime.pid"), "utf8").split(" ")[0]
      )
      process.kill(runtime, "SIGKILL")
      assert.notStrictEqual((await starting).code, 0)
      // The next first start of that shape ends the dead build's VM and builds the template whole.
      await ok(["create", "--image", defaultImage, "--egress", "off", "--memory", "384", "k2"])
      await ok(["start", "k2"])
      assert.include((await warmEvent("k2")) ?? "", "built by this start")
      assert.deepStrictEqual(templateVmm(), [])
      const leftovers = NodeFs.readdirSync(NodePath.join(stateDir, "templates")).filter((f) =>
        f.includes("staging")
      )
      assert.deepStrictEqual(leftovers, [])
      await ok(["delete", "--force", "k1", "k2"])
    },
    300_000
  )
})

/**
 * Client half of guest/tests/vm-smoke.sh: talks to the agent as PID 1 in a real VM over the
 * virtio-serial socket, checks what the boot set up, reconnects, and powers the VM off.
 * Prints one line per check and exits non-zero if any failed.
 */
import { Effect, Stream } from "effect"
import { ExecRequest } from "../../src/domain/Exec.ts"
import { AgentChannel } from "../../src/layers/guest/AgentChannel.ts"
import { GuestChannel } from "../../src/services/GuestChannel.ts"

const socket = process.argv[2]!
let failed = 0
const check = (name: string, ok: boolean, detail = "") => {
  if (!ok) failed++
  console.log(`${ok ? "ok  " : "FAIL"} ${name}${ok ? "" : `: ${detail}`}`)
}

const program = Effect.gen(function*() {
  const channel = yield* GuestChannel
  const session = Effect.gen(function*() {
    const conn = yield* channel.connect({ _tag: "UnixSocket", path: socket }, { timeout: "120 seconds" })
    const sh = (script: string, extra: Partial<ConstructorParameters<typeof ExecRequest>[0]> = {}) =>
      conn.exec(new ExecRequest({ argv: ["sh", "-c", script], ...extra }))
    return { conn, sh }
  })

  yield* Effect.scoped(Effect.gen(function*() {
    const { conn, sh } = yield* session
    check("handshake", conn.agent?.version === 1)
    check("hostname", (yield* sh("hostname")).stdout === "smoke\n")
    const mounts = (yield* sh("cat /proc/mounts")).stdout
    for (
      const m of [
        " / ext4",
        " /proc proc",
        " /sys sysfs",
        " /dev devtmpfs",
        " /dev/pts devpts",
        " /run tmpfs",
        " /tmp tmpfs",
        " /data ext4"
      ]
    ) {
      check(`mount${m}`, mounts.includes(m), mounts)
    }
    check("resolv.conf", (yield* sh("cat /etc/resolv.conf")).stdout === "nameserver 10.0.2.3\n")
    check("hosts", (yield* sh("cat /etc/hosts")).stdout.includes("10.0.2.9\tpeer"))
    const route = (yield* sh("ip route")).stdout
    check("default route", route.includes("default via 10.0.2.2 dev eth0"), route)
    check("eth0 address", (yield* sh("ip addr show eth0")).stdout.includes("inet 10.0.2.15/24"))
    check("loopback up", (yield* sh("ip addr show lo")).stdout.includes("inet 127.0.0.1/8"))
    check("user", (yield* sh("id -u", { user: "nobody" })).stdout === "65534\n")
    check("pty", (yield* sh("stty size", { tty: { rows: 33, cols: 99 } })).stdout.trim() === "33 99")
    yield* conn.putFile({
      path: "/data/up",
      mode: 0o640,
      data: Stream.make(new TextEncoder().encode("up\n"))
    })
    check("put file", (yield* sh("stat -c %a /data/up; cat /data/up")).stdout === "640\nup\n")
    yield* conn.deliverSecrets([{ name: "TOKEN", value: new TextEncoder().encode("s3") }])
    const secret = (yield* sh(
      "stat -c %a /run/secrets/TOKEN; cat /run/secrets/TOKEN; echo; grep -c ' /run/secrets tmpfs' /proc/mounts"
    )).stdout
    check("secrets", secret === "400\ns3\n1\n", secret)
    const big = yield* conn.exec(new ExecRequest({ argv: ["head", "-c", "3000000", "/dev/zero"] }))
    check("3 MB of output", big.stdout.length === 3000000)
  }))
  // a second host session on the same port
  yield* Effect.scoped(Effect.gen(function*() {
    const { conn, sh } = yield* session
    check("reconnect", (yield* sh("echo again")).stdout === "again\n")
    yield* conn.shutdown
  }))
})

Effect.runPromise(program.pipe(Effect.provide(AgentChannel.layer))).then(
  () => process.exit(failed === 0 ? 0 : 1),
  (error) => {
    console.log(`FAIL client: ${error}`)
    process.exit(1)
  }
)

/**
 * Writes guest/vectors/frames.jsonl (run from the repository root) after a deliberate protocol change:
 *   npx esbuild test/guest/vectors.gen.ts --bundle --platform=node --format=esm --outfile=/tmp/gen.mjs && node /tmp/gen.mjs
 * Valid vectors come from the TypeScript encoder; the C runner and vectors.test.ts then check
 * both decoders against them. Invalid vectors are built by hand below.
 */
import { writeFileSync } from "node:fs"
import { frameBytes, type Message } from "../../src/layers/guest/internal/messages.ts"
import { encodeHeader, FieldWriter, MessageType } from "../../src/layers/guest/internal/wire.ts"
import { hex, summarize, toJson } from "./summary.ts"

const bytes = (s: string) => new TextEncoder().encode(s)
const lines: Array<string> = []

const valid = (name: string, stream: number, message: Message) => {
  const frame = frameBytes(stream, message)
  lines.push(
    JSON.stringify({
      name,
      hex: hex(frame),
      stream,
      message: toJson(message),
      summary: summarize(stream, message)
    })
  )
}
/** Decodes to `message`, but is not what the canonical encoder would write. */
const lenient = (name: string, type: number, stream: number, payload: Uint8Array, message: Message) => {
  const frame = new Uint8Array([...encodeHeader(type, stream, payload.length), ...payload])
  lines.push(
    JSON.stringify({
      name,
      hex: hex(frame),
      stream,
      canonical: false,
      message: toJson(message),
      summary: summarize(stream, message)
    })
  )
}
const invalid = (name: string, frame: Uint8Array, error: string) =>
  lines.push(JSON.stringify({ name, hex: hex(frame), reject: error }))
const frame = (type: number, stream: number, payload: Uint8Array, flags = 0) => {
  const h = encodeHeader(type, stream, payload.length)
  h[3] = flags
  return new Uint8Array([...h, ...payload])
}
const tlv = () => new FieldWriter()

valid("hello from host", 0, { _tag: "Hello", version: 1, capabilities: [], window: 4194304 })
valid("hello from agent", 0, {
  _tag: "Hello",
  version: 1,
  software: "microagent-agent/0.1.0",
  capabilities: ["exec", "pty", "signals", "files", "secrets", "shutdown"],
  maxPayload: 1048576,
  window: 262144
})
valid("ping empty", 0, { _tag: "Ping", data: new Uint8Array() })
valid("ping with data", 7, { _tag: "Ping", data: bytes("hello") })
valid("pong", 7, { _tag: "Pong", data: bytes("hello") })
valid("error with errno", 3, {
  _tag: "Error",
  code: "not_found",
  message: "/x: No such file or directory",
  errno: 2
})
valid("error code only", 0, { _tag: "Error", code: "bad_magic" })
valid("ok", 9, { _tag: "Ok" })
valid("window", 1, { _tag: "Window", increment: 262144 })
valid("exec minimal", 1, { _tag: "Exec", argv: ["true"], env: [], stdin: false })
valid("exec full", 4294967295, {
  _tag: "Exec",
  argv: ["sh", "-c", 'echo "$A" | tr a-z A-Z'],
  env: ["A=b c", "EMPTY="],
  cwd: "/tmp",
  user: "nobody:65534",
  timeoutMs: 30000,
  killGraceMs: 250,
  stdoutLimit: 10485760,
  stderrLimit: 0,
  stdin: true,
  ptyRows: 24,
  ptyCols: 80
})
valid("exec utf-8 argv", 2, { _tag: "Exec", argv: ["echo", "héllo ✓"], env: [], stdin: false })
valid("stdin binary", 1, { _tag: "Stdin", data: new Uint8Array([0, 1, 2, 255, 254, 10, 13]) })
valid("eof", 1, { _tag: "Eof" })
valid("stdout", 1, { _tag: "Stdout", data: bytes("hi\n") })
valid("stderr", 1, { _tag: "Stderr", data: bytes("oops\n") })
valid("exit exited", 1, {
  _tag: "Exit",
  status: "exited",
  exitCode: 3,
  stdoutTruncated: false,
  stderrTruncated: false,
  durationUs: 1523,
  stdoutBytes: 3,
  stderrBytes: 4
})
valid("exit signaled", 2, {
  _tag: "Exit",
  status: "signaled",
  exitCode: 137,
  signal: 9,
  stdoutTruncated: true,
  stderrTruncated: false,
  durationUs: 99,
  stdoutBytes: 20000000,
  stderrBytes: 0
})
valid("exit timed out", 3, {
  _tag: "Exit",
  status: "timed_out",
  exitCode: 124,
  signal: 15,
  stdoutTruncated: false,
  stderrTruncated: true
})
valid("exit failed to start", 4, {
  _tag: "Exit",
  status: "failed_to_start",
  exitCode: 127,
  stdoutTruncated: false,
  stderrTruncated: false,
  error: "execve nope: No such file or directory"
})
valid("signal", 1, { _tag: "Signal", signal: 2 })
valid("resize", 1, { _tag: "Resize", rows: 50, cols: 132 })
valid("cancel", 1, { _tag: "Cancel" })
valid("started", 1, { _tag: "Started", pid: 4242 })
valid("file put", 5, { _tag: "FilePut", path: "/etc/app.conf", mode: 0o640, uid: 1000, gid: 100 })
valid("file put no owner", 5, { _tag: "FilePut", path: "/tmp/x", mode: 0o4755 })
valid("file get", 6, { _tag: "FileGet", path: "/var/log/x y.log" })
valid("file info", 6, { _tag: "FileInfo", mode: 0o600, size: 5000000000, uid: 0, gid: 0 })
valid("file data", 6, { _tag: "FileData", data: new Uint8Array([0xde, 0xad, 0xbe, 0xef]) })
valid("secrets", 8, {
  _tag: "Secrets",
  secrets: [{ name: "API_TOKEN", value: bytes("s3cr3t") }, { name: "_empty", value: new Uint8Array() }]
})
valid("secrets none", 8, { _tag: "Secrets", secrets: [] })
valid("secrets purge", 8, { _tag: "Secrets", secrets: [], purge: true })
valid("freshen", 11, {
  _tag: "Freshen",
  timeSec: 1767225600,
  timeNsec: 123456789,
  entropy: new Uint8Array([0x9f, 0x00, 0x3c, 0xff, 0x10, 0x42, 0x77, 0xa5]),
  hostname: "kid-1.example",
  machineId: true
})
valid("freshen clock only", 11, { _tag: "Freshen", timeSec: 1767225600 })
valid("freshen network", 11, {
  _tag: "Freshen",
  address: "10.0.2.17/24",
  gateway: "10.0.2.2",
  mac: "52:54:00:ab:cd:ef"
})
valid("freshen network with routes and resolvers", 11, {
  _tag: "Freshen",
  address: "10.77.0.20/24",
  gateway: "10.77.0.1",
  mac: "52:54:00:ab:cd:ef",
  routes: "203.0.113.0/24@10.77.0.254,198.51.100.7/32@10.77.0.253",
  dns: "10.77.0.1,192.0.2.53"
})
valid("freshen named-network NICs", 11, {
  _tag: "Freshen",
  nets: "02:6d:61:ff:00:01@52:54:00:0a:0b:0c@10.91.0.3/24,02:6d:61:ff:00:02@52:54:00:0a:0b:0d@10.92.0.9/16"
})
valid("ok answering freshen with named-network NICs", 11, { _tag: "Ok", nets: "failed", netsErrno: 19 })
valid("freshen forwarders", 11, { _tag: "Freshen", modelPort: 11434, brokers: "18888,65535,1" })
valid("ok answering freshen with forwarders", 11, { _tag: "Ok", forwarders: "done" })
valid("freshen disks", 11, {
  _tag: "Freshen",
  hostname: "ws-1",
  disks: "vdb:/work:rw,vdc:/mnt/ref-data.v2:ro"
})
valid("ok answering freshen with disks", 11, {
  _tag: "Ok",
  hostname: "done",
  disks: "failed",
  disksErrno: 19
})
valid("ok answering freshen with network", 11, {
  _tag: "Ok",
  clock: "done",
  rng: "done",
  hostname: "done",
  machineId: "done",
  network: "failed",
  networkErrno: 16
})
valid("ok answering freshen", 11, {
  _tag: "Ok",
  clock: "done",
  rng: "failed",
  rngErrno: 1,
  hostname: "done",
  machineId: "absent"
})
valid("ok answering freshen in host test mode", 11, {
  _tag: "Ok",
  clock: "skipped",
  rng: "skipped",
  hostname: "skipped",
  machineId: "skipped"
})
valid("shutdown", 10, { _tag: "Shutdown", action: "poweroff" })
valid("shutdown reboot with grace", 10, { _tag: "Shutdown", action: "reboot", graceMs: 2000 })

lenient(
  "exec with narrow integers and an unknown tag",
  MessageType.Exec,
  1,
  tlv().string(1, "sleep").string(1, "1").uint(5, 500, 2).uint(99, 7, 4).uint(9, 1, 8).finish(),
  { _tag: "Exec", argv: ["sleep", "1"], env: [], timeoutMs: 500, stdin: true }
)
lenient(
  "window as u64, duplicate field keeps the last",
  MessageType.Window,
  3,
  tlv().uint(1, 5, 8).uint(1, 65536, 8).finish(),
  { _tag: "Window", increment: 65536 }
)

invalid("bad magic", new Uint8Array([0x4d, 0x42, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0]), "bad_magic")
invalid("oversized payload (header only)", encodeHeader(MessageType.Stdin, 1, 1048577), "frame_too_large")
invalid(
  "beyond the hard limit (header only)",
  encodeHeader(MessageType.Stdin, 1, 16777217),
  "frame_too_large"
)
invalid("non-zero flags", frame(MessageType.Ping, 0, new Uint8Array(), 1), "bad_frame")
invalid("unknown type", frame(0x7f, 1, new Uint8Array()), "unknown_type")
invalid(
  "truncated field",
  frame(MessageType.Exec, 1, tlv().string(1, "true").finish().subarray(0, 8)),
  "bad_message"
)
invalid("field header cut short", frame(MessageType.Ok, 1, new Uint8Array([1, 0, 0])), "bad_message")
invalid("exec without argv", frame(MessageType.Exec, 1, tlv().string(3, "/").finish()), "bad_message")
invalid(
  "exec env without =",
  frame(MessageType.Exec, 1, tlv().string(1, "env").string(2, "NOEQUALS").finish()),
  "bad_message"
)
invalid("exec argv with NUL", frame(MessageType.Exec, 1, tlv().string(1, "a\u0000b").finish()), "bad_message")
invalid("exec empty argv[0]", frame(MessageType.Exec, 1, tlv().string(1, "").finish()), "bad_message")
invalid(
  "exec pty rows without cols",
  frame(MessageType.Exec, 1, tlv().string(1, "sh").uint(10, 24, 2).finish()),
  "bad_message"
)
invalid(
  "exec pty rows overflow",
  frame(MessageType.Exec, 1, tlv().string(1, "sh").uint(10, 70000, 4).uint(11, 80, 2).finish()),
  "bad_message"
)
invalid(
  "integer of width 3",
  frame(MessageType.Window, 1, tlv().bytes(1, new Uint8Array([1, 0, 0])).finish()),
  "bad_message"
)
invalid("window of zero", frame(MessageType.Window, 1, tlv().uint(1, 0, 4).finish()), "bad_message")
invalid("signal out of range", frame(MessageType.Signal, 1, tlv().uint(1, 65, 4).finish()), "bad_message")
invalid("hello without version", frame(MessageType.Hello, 0, tlv().uint(5, 1024, 4).finish()), "bad_message")
invalid(
  "exit status 4",
  frame(MessageType.Exit, 1, tlv().uint(1, 4, 1).uint(2, 0, 4).finish()),
  "bad_message"
)
invalid(
  "file put relative path",
  frame(MessageType.FilePut, 1, tlv().string(1, "etc/x").uint(2, 0o644, 4).finish()),
  "bad_message"
)
invalid(
  "file put mode beyond 07777",
  frame(MessageType.FilePut, 1, tlv().string(1, "/x").uint(2, 0o10000, 4).finish()),
  "bad_message"
)
invalid("file put without mode", frame(MessageType.FilePut, 1, tlv().string(1, "/x").finish()), "bad_message")
invalid(
  "secrets duplicate names",
  frame(
    MessageType.Secrets,
    1,
    tlv().string(1, "A").bytes(2, bytes("1")).string(1, "A").bytes(2, bytes("2")).finish()
  ),
  "bad_message"
)
invalid(
  "secrets bad name",
  frame(MessageType.Secrets, 1, tlv().string(1, "../x").bytes(2, bytes("1")).finish()),
  "bad_message"
)
invalid(
  "secrets name without value",
  frame(MessageType.Secrets, 1, tlv().string(1, "A").finish()),
  "bad_message"
)
invalid(
  "secrets value without name",
  frame(MessageType.Secrets, 1, tlv().bytes(2, bytes("1")).finish()),
  "bad_message"
)
invalid(
  "freshen hostname with a space",
  frame(MessageType.Freshen, 1, tlv().string(4, "a b").finish()),
  "bad_message"
)
for (
  const [what, tag, value] of [
    ["a route without its gateway", 10, "203.0.113.0/24"],
    ["a route prefix of 33", 10, "203.0.113.0/33@10.77.0.254"],
    ["a route list with a trailing comma", 10, "203.0.113.0/24@10.77.0.254,"],
    ["seventeen routes", 10, Array.from({ length: 17 }, (_, i) => `10.9.${i}.0/24@10.77.0.254`).join(",")],
    ["a resolver that is a name", 11, "dns.example"],
    ["five resolvers", 11, "1.1.1.1,1.1.1.2,1.1.1.3,1.1.1.4,1.1.1.5"],
    ["a broker port of 0", 14, "0"],
    ["a broker port of 65536", 14, "65536"],
    ["a broker port with a leading zero", 14, "018888"],
    ["nine broker ports", 14, "1,2,3,4,5,6,7,8,9"],
    ["a NIC without an address", 12, "02:6d:61:ff:00:01@52:54:00:0a:0b:0c"],
    ["a NIC with a multicast MAC", 12, "02:6d:61:ff:00:01@01:00:5e:00:00:01@10.91.0.3/24"],
    ["a NIC with a /31", 12, "02:6d:61:ff:00:01@52:54:00:0a:0b:0c@10.91.0.3/31"],
    [
      "nine NICs",
      12,
      Array.from({ length: 9 }, (_, i) => `02:6d:61:ff:00:0${i + 1}@52:54:00:0a:0b:0c@10.91.0.3/24`).join(",")
    ]
  ] as const
) {
  invalid(
    `freshen with ${what}`,
    frame(MessageType.Freshen, 1, tlv().string(tag, value).finish()),
    "bad_message"
  )
}
for (
  const [what, disks] of [
    ["a parent component", "vdb:/work/../etc:rw"],
    ["a dot component", "vdb:/./x"],
    ["a relative mountpoint", "vdb:work"],
    ["a device that is not virtio", "sda:/work"],
    ["an empty entry", "vdb:/a,,vdc:/b"],
    ["a space", "vdb:/my work"],
    ["an unknown mode", "vdb:/work:rx"]
  ]
) {
  invalid(
    `freshen disks with ${what}`,
    frame(MessageType.Freshen, 1, tlv().string(9, disks!).finish()),
    "bad_message"
  )
}
invalid("freshen model port 0", frame(MessageType.Freshen, 1, tlv().uint(13, 0, 4).finish()), "bad_message")
invalid(
  "freshen model port 65536",
  frame(MessageType.Freshen, 1, tlv().uint(13, 65536, 4).finish()),
  "bad_message"
)
invalid(
  "freshen multicast mac",
  frame(MessageType.Freshen, 1, tlv().string(8, "01:00:5e:00:00:01").finish()),
  "bad_message"
)
invalid(
  "freshen address with a /31 prefix",
  frame(MessageType.Freshen, 1, tlv().string(6, "10.0.2.17/31").finish()),
  "bad_message"
)
invalid(
  "freshen gateway with a fifth part",
  frame(MessageType.Freshen, 1, tlv().string(7, "10.0.2.2.1").finish()),
  "bad_message"
)
invalid("freshen empty hostname", frame(MessageType.Freshen, 1, tlv().string(4, "").finish()), "bad_message")
invalid(
  "freshen hostname of 65 bytes",
  frame(MessageType.Freshen, 1, tlv().string(4, "h".repeat(65)).finish()),
  "bad_message"
)
invalid(
  "freshen entropy of 4097 bytes",
  frame(MessageType.Freshen, 1, tlv().bytes(3, new Uint8Array(4097).fill(7)).finish()),
  "bad_message"
)
invalid(
  "freshen empty entropy",
  frame(MessageType.Freshen, 1, tlv().bytes(3, new Uint8Array()).finish()),
  "bad_message"
)
invalid(
  "freshen nanoseconds without seconds",
  frame(MessageType.Freshen, 1, tlv().uint(2, 5, 4).finish()),
  "bad_message"
)
invalid(
  "freshen nanoseconds of a whole second",
  frame(MessageType.Freshen, 1, tlv().uint(1, 1, 8).uint(2, 1_000_000_000, 4).finish()),
  "bad_message"
)
invalid("freshen machine_id 2", frame(MessageType.Freshen, 1, tlv().uint(5, 2, 1).finish()), "bad_message")
invalid("ok outcome 4", frame(MessageType.Ok, 1, tlv().uint(1, 4, 1).finish()), "bad_message")
invalid("shutdown action 2", frame(MessageType.Shutdown, 1, tlv().uint(1, 2, 1).finish()), "bad_message")

writeFileSync("guest/vectors/frames.jsonl", lines.join("\n") + "\n")
console.log(`${lines.length} vectors written`)

/**
 * The messages of the guest channel (docs/protocol.md §3) as Schemas, and their TLV codecs.
 * `decodeMessage` / `encodeMessage` map between a frame's (type, payload) and a validated message;
 * `FrameFromBytes` is the same as a Schema transformation over a whole frame.
 */
import { Either, ParseResult, Schema } from "effect"
import {
  checkHeader,
  encodeFrame,
  FieldWriter,
  HEADER_SIZE,
  MessageType,
  rawTags,
  readFields,
  readUint,
  tagOfType,
  textOf,
  WireError
} from "./wire.ts"

const U16 = 0xffff
const U32 = 0xffffffff
const U64 = Number.MAX_SAFE_INTEGER

const uint = (max: number) => Schema.Int.pipe(Schema.between(0, max))
/** Strings become C strings in the agent: a NUL would silently cut them. */
const WireString = Schema.String.pipe(
  Schema.filter((s) => !s.includes("\0"), { message: () => "contains NUL" })
)
const Bytes = Schema.Uint8ArrayFromSelf

export const Hello = Schema.TaggedStruct("Hello", {
  version: uint(U32),
  software: Schema.optional(WireString),
  capabilities: Schema.Array(WireString),
  maxPayload: Schema.optional(uint(U32)),
  window: Schema.optional(uint(U32))
})
export const Ping = Schema.TaggedStruct("Ping", { data: Bytes })
export const Pong = Schema.TaggedStruct("Pong", { data: Bytes })
export const ErrorMessage = Schema.TaggedStruct("Error", {
  code: WireString,
  message: Schema.optional(WireString),
  errno: Schema.optional(uint(U32))
})
/** How one step of a FRESHEN went: `skipped` in the agent's host test mode, `absent` when the image
 * has nothing to change (no /etc/machine-id). */
export const FreshenOutcome = Schema.Literal("done", "skipped", "failed", "absent")
const freshenOutcomes = ["done", "skipped", "failed", "absent"] as const
/** The answer that ends a stream; only an answer to FRESHEN carries fields (each step asked for). */
export const Ok = Schema.TaggedStruct("Ok", {
  clock: Schema.optional(FreshenOutcome),
  clockErrno: Schema.optional(uint(U32)),
  rng: Schema.optional(FreshenOutcome),
  rngErrno: Schema.optional(uint(U32)),
  hostname: Schema.optional(FreshenOutcome),
  hostnameErrno: Schema.optional(uint(U32)),
  machineId: Schema.optional(FreshenOutcome),
  machineIdErrno: Schema.optional(uint(U32)),
  network: Schema.optional(FreshenOutcome),
  networkErrno: Schema.optional(uint(U32)),
  disks: Schema.optional(FreshenOutcome),
  disksErrno: Schema.optional(uint(U32)),
  nets: Schema.optional(FreshenOutcome),
  netsErrno: Schema.optional(uint(U32)),
  forwarders: Schema.optional(FreshenOutcome),
  forwardersErrno: Schema.optional(uint(U32))
})
const okSteps = ["clock", "rng", "hostname", "machineId", "network", "disks", "nets", "forwarders"] as const
export const Window = Schema.TaggedStruct("Window", { increment: Schema.Int.pipe(Schema.between(1, U32)) })
export const Exec = Schema.TaggedStruct("Exec", {
  argv: Schema.NonEmptyArray(WireString),
  env: Schema.Array(WireString.pipe(Schema.pattern(/^[^=]+=/))),
  cwd: Schema.optional(WireString),
  user: Schema.optional(WireString),
  timeoutMs: Schema.optional(uint(U64)),
  killGraceMs: Schema.optional(uint(U32)),
  stdoutLimit: Schema.optional(uint(U64)),
  stderrLimit: Schema.optional(uint(U64)),
  stdin: Schema.Boolean,
  ptyRows: Schema.optional(uint(U16)),
  ptyCols: Schema.optional(uint(U16))
})
export const Stdin = Schema.TaggedStruct("Stdin", { data: Bytes })
export const Eof = Schema.TaggedStruct("Eof", {})
export const Stdout = Schema.TaggedStruct("Stdout", { data: Bytes })
export const Stderr = Schema.TaggedStruct("Stderr", { data: Bytes })
export const ExitStatusWire = Schema.Literal("exited", "signaled", "timed_out", "failed_to_start")
const exitStatuses = ["exited", "signaled", "timed_out", "failed_to_start"] as const
export const Exit = Schema.TaggedStruct("Exit", {
  status: ExitStatusWire,
  exitCode: uint(U32),
  signal: Schema.optional(uint(U32)),
  stdoutTruncated: Schema.Boolean,
  stderrTruncated: Schema.Boolean,
  durationUs: Schema.optional(uint(U64)),
  error: Schema.optional(WireString),
  stdoutBytes: Schema.optional(uint(U64)),
  stderrBytes: Schema.optional(uint(U64))
})
export const Signal = Schema.TaggedStruct("Signal", { signal: Schema.Int.pipe(Schema.between(1, 64)) })
export const Resize = Schema.TaggedStruct("Resize", { rows: uint(U16), cols: uint(U16) })
export const Cancel = Schema.TaggedStruct("Cancel", {})
export const Started = Schema.TaggedStruct("Started", { pid: uint(U32) })
const AbsolutePath = WireString.pipe(Schema.pattern(/^\//))
export const FilePut = Schema.TaggedStruct("FilePut", {
  path: AbsolutePath,
  mode: uint(0o7777),
  uid: Schema.optional(uint(U32)),
  gid: Schema.optional(uint(U32))
})
export const FileGet = Schema.TaggedStruct("FileGet", { path: AbsolutePath })
export const FileInfo = Schema.TaggedStruct("FileInfo", {
  mode: uint(U32),
  size: uint(U64),
  uid: Schema.optional(uint(U32)),
  gid: Schema.optional(uint(U32))
})
export const FileData = Schema.TaggedStruct("FileData", { data: Bytes })
export const SecretName = WireString.pipe(Schema.pattern(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/))
export const Secrets = Schema.TaggedStruct("Secrets", {
  secrets: Schema.Array(Schema.Struct({ name: SecretName, value: Bytes })).pipe(
    Schema.filter((items) => new Set(items.map((s) => s.name)).size === items.length, {
      message: () => "duplicate secret names"
    })
  ),
  /** Wipe every secret delivered before (overwritten in place, then removed) first. */
  purge: Schema.optional(Schema.Boolean)
})
/** What the kernel takes as a hostname, narrowed to the characters a hostname is made of. */
export const Hostname = WireString.pipe(Schema.pattern(/^[A-Za-z0-9.-]{1,64}$/))
const octet = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]|0[0-9]{1,2})"
const ipv4Pattern = new RegExp(`^${octet}(\\.${octet}){3}$`)
const cidrPattern = new RegExp(`^${octet}(\\.${octet}){3}/([89]|[12][0-9]|30)$`)
const MAX_ENTROPY = 4096
const routePattern = `${octet}(\\.${octet}){3}/([0-9]|[12][0-9]|3[0-2])@${octet}(\\.${octet}){3}`
const routesPattern = new RegExp(`^${routePattern}(,${routePattern}){0,15}$`)
const resolversPattern = new RegExp(`^${octet}(\\.${octet}){3}(,${octet}(\\.${octet}){3}){0,3}$`)
const macText = "[0-9a-fA-F][02468aceACE](:[0-9a-fA-F]{2}){5}"
const netEntry = `${macText}@${macText}@${octet}(\\.${octet}){3}/([89]|[12][0-9]|30)`
const netsPattern = new RegExp(`^${netEntry}(,${netEntry}){0,7}$`)
const portText = "([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
const portsPattern = new RegExp(`^${portText}(,${portText}){0,7}$`)
/** Mountpoint characters and no `.` or `..` component: what the agent's decoder also checks. */
const diskEntry = "vd[a-z]+:/(?!\\.\\.?(?:/|:|,|$))(?:[A-Za-z0-9_.-]|/(?!\\.\\.?(?:/|:|,|$)))*(?::r[ow])?"
const disksPattern = new RegExp(`^${diskEntry}(,${diskEntry})*$`)
export const Freshen = Schema.TaggedStruct("Freshen", {
  /** The host's wall clock: seconds since the epoch … */
  timeSec: Schema.optional(uint(U64)),
  /** … and nanoseconds (only with `timeSec`). */
  timeNsec: Schema.optional(Schema.Int.pipe(Schema.between(0, 999_999_999))),
  /** Host random bytes, credited to the guest's RNG, which is then reseeded. */
  entropy: Schema.optional(
    Bytes.pipe(Schema.filter((b) => b.length >= 1 && b.length <= MAX_ENTROPY, {
      message: () => `entropy must be 1 to ${MAX_ENTROPY} bytes`
    }))
  ),
  hostname: Schema.optional(Hostname),
  /** Write a new /etc/machine-id where the image has one. */
  machineId: Schema.optional(Schema.Boolean),
  /** eth0's new address, `A.B.C.D/N` (N from 8 to 30). */
  address: Schema.optional(WireString.pipe(Schema.pattern(cidrPattern))),
  /** The new default route's gateway, `A.B.C.D`. */
  gateway: Schema.optional(WireString.pipe(Schema.pattern(ipv4Pattern))),
  /** eth0's new MAC, six hex pairs joined by `:`, unicast. */
  mac: Schema.optional(WireString.pipe(Schema.pattern(/^[0-9a-fA-F][02468aceACE](:[0-9a-fA-F]{2}){5}$/))),
  /** Extra routes on eth0, `DST/N@GW` (N from 0 to 32), at most 16: part of the network step. */
  routes: Schema.optional(WireString.pipe(Schema.maxLength(600), Schema.pattern(routesPattern))),
  /** The resolvers of /etc/resolv.conf, at most 4 dotted quads: part of the network step. */
  dns: Schema.optional(WireString.pipe(Schema.pattern(resolversPattern))),
  /**
   * NICs on named networks, `OLDMAC@NEWMAC@A.B.C.D/N` (at most 8): a restored template's stand-in found
   * by its MAC, given the workspace's MAC and address, and brought up.
   */
  nets: Schema.optional(WireString.pipe(Schema.pattern(netsPattern))),
  /** The guest TCP port whose connections the model channel's forwarder carries (started now). */
  modelPort: Schema.optional(Schema.Int.pipe(Schema.between(1, 65535))),
  /** The broker endpoints' guest TCP ports, in order, whose forwarders start now (at most 8). */
  brokers: Schema.optional(WireString.pipe(Schema.pattern(portsPattern))),
  /** Extra disks to probe again and mount, `vdb:/mnt:rw,…` (a restored template's stand-ins replaced). */
  disks: Schema.optional(WireString.pipe(Schema.maxLength(1000), Schema.pattern(disksPattern)))
}).pipe(
  Schema.filter((m) => m.timeNsec === undefined || m.timeSec !== undefined, {
    message: () => "Freshen.time_nsec without time_sec"
  })
)
export const Shutdown = Schema.TaggedStruct("Shutdown", {
  action: Schema.Literal("poweroff", "reboot"),
  graceMs: Schema.optional(uint(U32))
})

export const Message = Schema.Union(
  Hello,
  Ping,
  Pong,
  ErrorMessage,
  Ok,
  Window,
  Exec,
  Stdin,
  Eof,
  Stdout,
  Stderr,
  Exit,
  Signal,
  Resize,
  Cancel,
  Started,
  FilePut,
  FileGet,
  FileInfo,
  FileData,
  Secrets,
  Freshen,
  Shutdown
)
export type Message = typeof Message.Type

const validate = Schema.validateEither(Message)

// ---- payload decoding ----

const bad = (what: string) => new WireError("bad_message", what)

/** Decodes a frame payload of a known type into a validated message. */
export const decodeMessage = (type: number, payload: Uint8Array): Either.Either<Message, WireError> => {
  const tag = tagOfType(type)
  if (tag === undefined) {
    return Either.left(new WireError("unknown_type", `unknown type 0x${type.toString(16)}`))
  }
  if (rawTags.has(tag)) return Either.right({ _tag: tag, data: payload } as Message)
  const fields = readFields(payload)
  if (fields === undefined) return Either.left(bad(`malformed ${tag} fields`))
  const o: Record<string, unknown> = { _tag: tag }
  let failure: string | undefined
  const u = (v: Uint8Array, max: number, name: string) => {
    const n = readUint(v, max)
    if (n === undefined) failure ??= `${tag}.${name} out of range`
    return n
  }
  const s = (v: Uint8Array, name: string) => {
    if (v.includes(0)) failure ??= `${tag}.${name} contains NUL`
    return textOf(v)
  }
  switch (tag) {
    case "Hello": {
      const caps: Array<string> = []
      o.capabilities = caps
      for (const f of fields) {
        if (f.tag === 1) o.version = u(f.value, U32, "version")
        else if (f.tag === 2) o.software = s(f.value, "software")
        else if (f.tag === 3) caps.push(s(f.value, "capability"))
        else if (f.tag === 4) o.maxPayload = u(f.value, U32, "max_payload")
        else if (f.tag === 5) o.window = u(f.value, U32, "window")
      }
      break
    }
    case "Error":
      for (const f of fields) {
        if (f.tag === 1) o.code = s(f.value, "code")
        else if (f.tag === 2) o.message = s(f.value, "message")
        else if (f.tag === 3) o.errno = u(f.value, U32, "errno")
      }
      break
    case "Window":
      for (const f of fields) if (f.tag === 1) o.increment = u(f.value, U32, "increment")
      break
    case "Exec": {
      const argv: Array<string> = []
      const env: Array<string> = []
      o.argv = argv
      o.env = env
      o.stdin = false
      for (const f of fields) {
        switch (f.tag) {
          case 1:
            argv.push(s(f.value, "argv"))
            break
          case 2:
            env.push(s(f.value, "env"))
            break
          case 3:
            o.cwd = s(f.value, "cwd")
            break
          case 4:
            o.user = s(f.value, "user")
            break
          case 5:
            o.timeoutMs = u(f.value, U64, "timeout_ms")
            break
          case 6:
            o.killGraceMs = u(f.value, U32, "kill_grace_ms")
            break
          case 7:
            o.stdoutLimit = u(f.value, U64, "stdout_limit")
            break
          case 8:
            o.stderrLimit = u(f.value, U64, "stderr_limit")
            break
          case 9:
            o.stdin = u(f.value, 1, "stdin") === 1
            break
          case 10:
            o.ptyRows = u(f.value, U16, "pty_rows")
            break
          case 11:
            o.ptyCols = u(f.value, U16, "pty_cols")
            break
        }
      }
      if ((o.ptyRows === undefined) !== (o.ptyCols === undefined)) {
        failure ??= "Exec needs both pty_rows and pty_cols"
      }
      if (argv.length > 0 && argv[0] === "") failure ??= "Exec.argv[0] is empty"
      break
    }
    case "Exit": {
      o.stdoutTruncated = false
      o.stderrTruncated = false
      for (const f of fields) {
        switch (f.tag) {
          case 1: {
            const n = u(f.value, 3, "status")
            o.status = n === undefined ? undefined : exitStatuses[n]
            break
          }
          case 2:
            o.exitCode = u(f.value, U32, "exit_code")
            break
          case 3:
            o.signal = u(f.value, U32, "signal")
            break
          case 4:
            o.stdoutTruncated = u(f.value, 1, "stdout_truncated") === 1
            break
          case 5:
            o.stderrTruncated = u(f.value, 1, "stderr_truncated") === 1
            break
          case 6:
            o.durationUs = u(f.value, U64, "duration_us")
            break
          case 7:
            o.error = s(f.value, "error")
            break
          case 8:
            o.stdoutBytes = u(f.value, U64, "stdout_bytes")
            break
          case 9:
            o.stderrBytes = u(f.value, U64, "stderr_bytes")
            break
        }
      }
      break
    }
    case "Signal":
      for (const f of fields) if (f.tag === 1) o.signal = u(f.value, 64, "signal")
      break
    case "Resize":
      for (const f of fields) {
        if (f.tag === 1) o.rows = u(f.value, U16, "rows")
        else if (f.tag === 2) o.cols = u(f.value, U16, "cols")
      }
      break
    case "Started":
      for (const f of fields) if (f.tag === 1) o.pid = u(f.value, U32, "pid")
      break
    case "FilePut":
      for (const f of fields) {
        if (f.tag === 1) o.path = s(f.value, "path")
        else if (f.tag === 2) o.mode = u(f.value, 0o7777, "mode")
        else if (f.tag === 3) o.uid = u(f.value, U32, "uid")
        else if (f.tag === 4) o.gid = u(f.value, U32, "gid")
      }
      break
    case "FileGet":
      for (const f of fields) if (f.tag === 1) o.path = s(f.value, "path")
      break
    case "FileInfo":
      for (const f of fields) {
        if (f.tag === 1) o.mode = u(f.value, U32, "mode")
        else if (f.tag === 2) o.size = u(f.value, U64, "size")
        else if (f.tag === 3) o.uid = u(f.value, U32, "uid")
        else if (f.tag === 4) o.gid = u(f.value, U32, "gid")
      }
      break
    case "Secrets": {
      const secrets: Array<{ name: string; value: Uint8Array }> = []
      let pending: string | undefined
      for (const f of fields) {
        if (f.tag === 1) {
          if (pending !== undefined) failure ??= "Secrets: name without value"
          pending = s(f.value, "name")
        } else if (f.tag === 2) {
          if (pending === undefined) failure ??= "Secrets: value without name"
          else secrets.push({ name: pending, value: f.value })
          pending = undefined
        } else if (f.tag === 3) {
          if (u(f.value, 1, "purge") === 1) o.purge = true
        }
      }
      if (pending !== undefined) failure ??= "Secrets: name without value"
      o.secrets = secrets
      break
    }
    case "Shutdown":
      o.action = "poweroff"
      for (const f of fields) {
        if (f.tag === 1) {
          const n = u(f.value, 1, "action")
          o.action = n === 1 ? "reboot" : "poweroff"
        } else if (f.tag === 2) o.graceMs = u(f.value, U32, "grace_ms")
      }
      break
    case "Freshen":
      for (const f of fields) {
        if (f.tag === 1) o.timeSec = u(f.value, U64, "time_sec")
        else if (f.tag === 2) o.timeNsec = u(f.value, 999_999_999, "time_nsec")
        else if (f.tag === 3) o.entropy = f.value
        else if (f.tag === 4) o.hostname = s(f.value, "hostname")
        else if (f.tag === 5) {
          if (u(f.value, 1, "machine_id") === 1) o.machineId = true
        } else if (f.tag === 6) o.address = s(f.value, "address")
        else if (f.tag === 7) o.gateway = s(f.value, "gateway")
        else if (f.tag === 8) o.mac = s(f.value, "mac")
        else if (f.tag === 9) o.disks = s(f.value, "disks")
        else if (f.tag === 10) o.routes = s(f.value, "routes")
        else if (f.tag === 11) o.dns = s(f.value, "dns")
        else if (f.tag === 12) o.nets = s(f.value, "nets")
        else if (f.tag === 13) o.modelPort = u(f.value, 65535, "model_port")
        else if (f.tag === 14) o.brokers = s(f.value, "brokers")
      }
      break
    case "Ok":
      for (const f of fields) {
        if (f.tag < 1 || f.tag > 2 * okSteps.length) continue
        const step = okSteps[(f.tag - 1) >> 1]!
        if (f.tag % 2 === 1) {
          const n = u(f.value, 3, step)
          o[step] = n === undefined ? undefined : freshenOutcomes[n]
        } else {
          o[`${step}Errno`] = u(f.value, U32, `${step}_errno`)
        }
      }
      break
    case "Eof":
    case "Cancel":
      break
  }
  if (failure !== undefined) return Either.left(bad(failure))
  return Either.mapLeft(validate(o), (e) => bad(`${tag}: ${ParseResult.TreeFormatter.formatErrorSync(e)}`))
}

// ---- payload encoding (canonical: tags ascending, widths per the spec) ----

const encodeMessage = (m: Message): { type: number; payload: Uint8Array } => {
  const type = MessageType[m._tag]
  const w = new FieldWriter()
  switch (m._tag) {
    case "Ping":
    case "Pong":
    case "Stdin":
    case "Stdout":
    case "Stderr":
    case "FileData":
      return { type, payload: m.data }
    case "Hello":
      w.uint(1, m.version, 4)
      if (m.software !== undefined) w.string(2, m.software)
      for (const c of m.capabilities) w.string(3, c)
      if (m.maxPayload !== undefined) w.uint(4, m.maxPayload, 4)
      if (m.window !== undefined) w.uint(5, m.window, 4)
      break
    case "Error":
      w.string(1, m.code)
      if (m.message !== undefined) w.string(2, m.message)
      if (m.errno !== undefined) w.uint(3, m.errno, 4)
      break
    case "Window":
      w.uint(1, m.increment, 4)
      break
    case "Exec":
      for (const a of m.argv) w.string(1, a)
      for (const e of m.env) w.string(2, e)
      if (m.cwd !== undefined) w.string(3, m.cwd)
      if (m.user !== undefined) w.string(4, m.user)
      if (m.timeoutMs !== undefined) w.uint(5, m.timeoutMs, 8)
      if (m.killGraceMs !== undefined) w.uint(6, m.killGraceMs, 4)
      if (m.stdoutLimit !== undefined) w.uint(7, m.stdoutLimit, 8)
      if (m.stderrLimit !== undefined) w.uint(8, m.stderrLimit, 8)
      if (m.stdin) w.uint(9, 1, 1)
      if (m.ptyRows !== undefined) w.uint(10, m.ptyRows, 2)
      if (m.ptyCols !== undefined) w.uint(11, m.ptyCols, 2)
      break
    case "Exit":
      w.uint(1, exitStatuses.indexOf(m.status), 1)
      w.uint(2, m.exitCode, 4)
      if (m.signal !== undefined) w.uint(3, m.signal, 4)
      if (m.stdoutTruncated) w.uint(4, 1, 1)
      if (m.stderrTruncated) w.uint(5, 1, 1)
      if (m.durationUs !== undefined) w.uint(6, m.durationUs, 8)
      if (m.error !== undefined) w.string(7, m.error)
      if (m.stdoutBytes !== undefined) w.uint(8, m.stdoutBytes, 8)
      if (m.stderrBytes !== undefined) w.uint(9, m.stderrBytes, 8)
      break
    case "Signal":
      w.uint(1, m.signal, 4)
      break
    case "Resize":
      w.uint(1, m.rows, 2).uint(2, m.cols, 2)
      break
    case "Started":
      w.uint(1, m.pid, 4)
      break
    case "FilePut":
      w.string(1, m.path).uint(2, m.mode, 4)
      if (m.uid !== undefined) w.uint(3, m.uid, 4)
      if (m.gid !== undefined) w.uint(4, m.gid, 4)
      break
    case "FileGet":
      w.string(1, m.path)
      break
    case "FileInfo":
      w.uint(1, m.mode, 4).uint(2, m.size, 8)
      if (m.uid !== undefined) w.uint(3, m.uid, 4)
      if (m.gid !== undefined) w.uint(4, m.gid, 4)
      break
    case "Secrets":
      for (const s of m.secrets) w.string(1, s.name).bytes(2, s.value)
      if (m.purge === true) w.uint(3, 1, 1)
      break
    case "Shutdown":
      w.uint(1, m.action === "reboot" ? 1 : 0, 1)
      if (m.graceMs !== undefined) w.uint(2, m.graceMs, 4)
      break
    case "Freshen":
      if (m.timeSec !== undefined) w.uint(1, m.timeSec, 8)
      if (m.timeNsec !== undefined) w.uint(2, m.timeNsec, 4)
      if (m.entropy !== undefined) w.bytes(3, m.entropy)
      if (m.hostname !== undefined) w.string(4, m.hostname)
      if (m.machineId === true) w.uint(5, 1, 1)
      if (m.address !== undefined) w.string(6, m.address)
      if (m.gateway !== undefined) w.string(7, m.gateway)
      if (m.mac !== undefined) w.string(8, m.mac)
      if (m.disks !== undefined) w.string(9, m.disks)
      if (m.routes !== undefined) w.string(10, m.routes)
      if (m.dns !== undefined) w.string(11, m.dns)
      if (m.nets !== undefined) w.string(12, m.nets)
      if (m.modelPort !== undefined) w.uint(13, m.modelPort, 4)
      if (m.brokers !== undefined) w.string(14, m.brokers)
      break
    case "Ok":
      okSteps.forEach((step, i) => {
        const outcome = m[step]
        const errno = m[`${step}Errno`]
        if (outcome !== undefined) w.uint(2 * i + 1, freshenOutcomes.indexOf(outcome), 1)
        if (errno !== undefined) w.uint(2 * i + 2, errno, 4)
      })
      break
    case "Eof":
    case "Cancel":
      break
  }
  return { type, payload: w.finish() }
}

export interface Frame {
  readonly stream: number
  readonly message: Message
}

export const frameBytes = (stream: number, message: Message): Uint8Array => {
  const { payload, type } = encodeMessage(message)
  return encodeFrame(type, stream, payload)
}

/** Decodes exactly one whole frame (header and payload). */
export const decodeFrame = (bytes: Uint8Array): Either.Either<Frame, WireError> => {
  if (bytes.length < HEADER_SIZE) return Either.left(new WireError("bad_frame", "shorter than a header"))
  const h = checkHeader(bytes)
  if (h.error) return Either.left(h.error)
  if (bytes.length !== HEADER_SIZE + h.length) {
    return Either.left(new WireError("bad_frame", "length does not match the bytes given", h.stream))
  }
  return Either.map(
    decodeMessage(h.type, bytes.subarray(HEADER_SIZE)),
    (message) => ({ stream: h.stream, message })
  )
}

const FrameSchema = Schema.Struct({ stream: uint(U32), message: Message })

/** A whole frame as a Schema: bytes on the encoded side, `{ stream, message }` on the other. */
export const FrameFromBytes = Schema.transformOrFail(Bytes, FrameSchema, {
  strict: true,
  decode: (bytes, _, ast) =>
    Either.match(decodeFrame(bytes), {
      onLeft: (e) => ParseResult.fail(new ParseResult.Type(ast, bytes, `${e.code}: ${e.message}`)),
      onRight: (f) => ParseResult.succeed(f)
    }),
  encode: (f) => ParseResult.succeed(frameBytes(f.stream, f.message))
})

/**
 * The canonical one-line summary of a decoded message, as printed by the C test runner
 * (guest/tests/test_proto.c), so both decoders are checked against the same text.
 */
import type { Message } from "../../src/layers/guest/internal/messages.ts"

const enc = new TextEncoder()
const safe = /[A-Za-z0-9._/-]/

const pct = (s: string): string =>
  Array.from(enc.encode(s), (b) => {
    const c = String.fromCharCode(b)
    return b < 128 && safe.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, "0")}`
  }).join("")

export const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex")

const typeNames: Record<Message["_tag"], string> = {
  Hello: "HELLO",
  Ping: "PING",
  Pong: "PONG",
  Error: "ERROR",
  Ok: "OK",
  Window: "WINDOW",
  Exec: "EXEC",
  Stdin: "STDIN",
  Eof: "EOF",
  Stdout: "STDOUT",
  Stderr: "STDERR",
  Exit: "EXIT",
  Signal: "SIGNAL",
  Resize: "RESIZE",
  Cancel: "CANCEL",
  Started: "STARTED",
  FilePut: "FILE_PUT",
  FileGet: "FILE_GET",
  FileInfo: "FILE_INFO",
  FileData: "FILE_DATA",
  Secrets: "SECRETS",
  Freshen: "FRESHEN",
  Shutdown: "SHUTDOWN"
}

export const summarize = (stream: number, m: Message): string => {
  const parts: Array<string> = [typeNames[m._tag], `stream=${stream}`]
  const s = (k: string, v: string | undefined) => v !== undefined && parts.push(`${k}=${pct(v)}`)
  const n = (k: string, v: number | undefined) => v !== undefined && parts.push(`${k}=${v}`)
  const flag = (k: string, v: boolean) => v && parts.push(`${k}=1`)
  switch (m._tag) {
    case "Ping":
    case "Pong":
    case "Stdin":
    case "Stdout":
    case "Stderr":
    case "FileData":
      parts.push(`data=${hex(m.data)}`)
      break
    case "Hello":
      n("version", m.version)
      s("software", m.software)
      for (const c of m.capabilities) s("capability", c)
      n("max_payload", m.maxPayload)
      n("window", m.window)
      break
    case "Error":
      s("code", m.code)
      s("message", m.message)
      n("errno", m.errno)
      break
    case "Window":
      n("increment", m.increment)
      break
    case "Exec":
      for (const a of m.argv) s("argv", a)
      for (const e of m.env) s("env", e)
      s("cwd", m.cwd)
      s("user", m.user)
      n("timeout_ms", m.timeoutMs)
      n("kill_grace_ms", m.killGraceMs)
      n("stdout_limit", m.stdoutLimit)
      n("stderr_limit", m.stderrLimit)
      flag("stdin", m.stdin)
      n("pty_rows", m.ptyRows)
      n("pty_cols", m.ptyCols)
      break
    case "Exit":
      n("status", ["exited", "signaled", "timed_out", "failed_to_start"].indexOf(m.status))
      n("exit_code", m.exitCode)
      n("signal", m.signal)
      flag("stdout_truncated", m.stdoutTruncated)
      flag("stderr_truncated", m.stderrTruncated)
      n("duration_us", m.durationUs)
      s("error", m.error)
      n("stdout_bytes", m.stdoutBytes)
      n("stderr_bytes", m.stderrBytes)
      break
    case "Signal":
      n("signal", m.signal)
      break
    case "Resize":
      n("rows", m.rows)
      n("cols", m.cols)
      break
    case "Started":
      n("pid", m.pid)
      break
    case "FilePut":
      s("path", m.path)
      n("mode", m.mode)
      n("uid", m.uid)
      n("gid", m.gid)
      break
    case "FileGet":
      s("path", m.path)
      break
    case "FileInfo":
      n("mode", m.mode)
      n("size", m.size)
      n("uid", m.uid)
      n("gid", m.gid)
      break
    case "Secrets":
      for (const x of m.secrets) {
        s("name", x.name)
        parts.push(`value=${hex(x.value)}`)
      }
      if (m.purge === true) n("purge", 1)
      break
    case "Shutdown":
      n("action", m.action === "reboot" ? 1 : 0)
      n("grace_ms", m.graceMs)
      break
    case "Freshen":
      n("time_sec", m.timeSec)
      n("time_nsec", m.timeNsec)
      if (m.entropy !== undefined) parts.push(`entropy=${hex(m.entropy)}`)
      s("hostname", m.hostname)
      if (m.machineId === true) n("machine_id", 1)
      s("address", m.address)
      s("gateway", m.gateway)
      s("mac", m.mac)
      s("disks", m.disks)
      s("routes", m.routes)
      s("dns", m.dns)
      s("nets", m.nets)
      n("model_port", m.modelPort)
      s("brokers", m.brokers)
      break
    case "Ok": {
      const outcomes = ["done", "skipped", "failed", "absent"]
      const step = (name: string, outcome: string | undefined, errno: number | undefined) => {
        if (outcome !== undefined) n(name, outcomes.indexOf(outcome))
        n(`${name}_errno`, errno)
      }
      step("clock", m.clock, m.clockErrno)
      step("rng", m.rng, m.rngErrno)
      step("hostname", m.hostname, m.hostnameErrno)
      step("machine_id", m.machineId, m.machineIdErrno)
      step("network", m.network, m.networkErrno)
      step("disks", m.disks, m.disksErrno)
      step("nets", m.nets, m.netsErrno)
      step("forwarders", m.forwarders, m.forwardersErrno)
      break
    }
    case "Eof":
    case "Cancel":
      break
  }
  return parts.join(" ")
}

/** JSON form of a message for the vector file: byte fields as hex strings. */
export const toJson = (m: Message): unknown =>
  JSON.parse(JSON.stringify(m, (_k, v) => (v instanceof Uint8Array ? hex(v) : v)))

/**
 * The fast path of `microagent exec` and `microagent run`: when the state directory's runtime is up,
 * the first stage speaks @effect/rpc's ndjson protocol to it directly (node:net only), so a one-off
 * command costs node's start-up plus one round trip instead of loading Effect and the RPC client
 * (0.3-0.45 s, and CPU that parallel runs take from the VMs). It handles only the plain form of a command and answers exactly as the full CLI does (output, exit-code passthrough,
 * the classified error shape, exit codes 1/2/75, --json); anything else — a flag it does not know, a
 * value it would have to validate, no runtime listening — returns `undefined` and the full CLI runs.
 *
 * Imports nothing but node built-ins: this file is bundled into the first stage.
 */
import * as Net from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"

interface FastCall {
  readonly verb: "exec" | "run"
  readonly stateDir: string | undefined
  readonly json: boolean | undefined
  /** `run --keep`: the workspace's name is printed first. */
  readonly keep: boolean
  readonly payload: Record<string, unknown>
}

const envKey = /^[A-Za-z_][A-Za-z0-9_]*$/
const positiveInt = (text: string | undefined) =>
  text !== undefined && /^[0-9]+$/.test(text) && Number(text) > 0 ? Number(text) : undefined

/** As `defaultBackend` in src/layers/backends/Backends.ts. */
const defaultBackend = () => {
  const fromEnv = process.env.MICROAGENT_BACKEND
  return fromEnv === "fake" || fromEnv === "qemu" || fromEnv === "firecracker" ? fromEnv : "qemu"
}

/**
 * The command line of a plain `exec` or `run`, or undefined when the full CLI must handle it. Global
 * flags are accepted anywhere before the guest's argv, as src/cli/Argv.ts does.
 */
export const parseFast = (argv: ReadonlyArray<string>): FastCall | undefined => {
  // A cluster's calls go through the CLI's cluster client, not to this host's runtime.
  if ((process.env.MICROAGENT_CLUSTER ?? "") !== "") return undefined
  let json: boolean | undefined
  let stateDir: string | undefined
  let backend: string | undefined
  let verb: "exec" | "run" | undefined
  let target: string | undefined
  let keep = false
  let rm = false
  const env: Record<string, string> = {}
  const fields: Record<string, unknown> = {}
  let guest: ReadonlyArray<string> = []
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === "--") return undefined
    const eq = arg.startsWith("--") ? arg.indexOf("=") : -1
    const flag = eq > 0 ? arg.slice(0, eq) : arg
    const value = (): string | undefined => (eq > 0 ? arg.slice(eq + 1) : argv[++i])
    switch (flag) {
      case "--json":
        if (eq > 0) return undefined
        json = true
        continue
      case "--output": {
        const format = value()
        if (format !== "json" && format !== "text") return undefined
        json = format === "json"
        continue
      }
      case "--no-color":
        if (eq > 0) return undefined
        continue
      case "--state-dir": {
        const dir = value()
        if (dir === undefined || dir === "") return undefined
        stateDir = dir
        continue
      }
      case "--backend": {
        backend = value()
        if (backend !== "qemu" && backend !== "fake") return undefined
        continue
      }
    }
    if (verb === undefined) {
      if (arg !== "exec" && arg !== "run") return undefined
      verb = arg
      continue
    }
    // The inline form of a verb's flag (`--env=K=V`) is parsed by @effect/cli with quirks of its own.
    if (eq > 0) return undefined
    const number = (field: string) => {
      const n = positiveInt(value())
      if (n === undefined) return false
      fields[field] = n
      return true
    }
    const text = (field: string) => {
      const v = value()
      if (v === undefined) return false
      fields[field] = v
      return true
    }
    switch (flag) {
      case "-e":
      case "--env": {
        const pair = value()
        if (pair === undefined) return undefined
        const at = pair.indexOf("=")
        if (at <= 0 || !envKey.test(pair.slice(0, at))) return undefined
        env[pair.slice(0, at)] = pair.slice(at + 1)
        continue
      }
      case "--cwd":
        if (!text("cwd")) return undefined
        continue
      case "--user":
        if (!text("user")) return undefined
        continue
      case "--timeout":
        if (!number("timeoutSeconds")) return undefined
        continue
    }
    if (verb === "run") {
      switch (flag) {
        case "--name":
          if (!text("name")) return undefined
          continue
        case "--memory":
          if (!number("memoryMiB")) return undefined
          continue
        case "--cpus":
          if (!number("cpus")) return undefined
          continue
        case "--boot-timeout":
          if (!number("bootTimeoutSeconds")) return undefined
          continue
        case "--network": {
          const mode = value()
          if (mode !== "user" && mode !== "isolated") return undefined
          fields.network = mode
          continue
        }
        case "--profile": {
          const profile = value()
          if (profile !== "tiny" && profile !== "small" && profile !== "medium" && profile !== "large") {
            return undefined
          }
          fields.profile = profile
          continue
        }
        case "--keep":
          keep = true
          continue
        case "--rm":
          rm = true
          continue
      }
    }
    // --stdin, --stream, --file, --help and anything unknown: the full CLI.
    if (arg.startsWith("-")) return undefined
    target = arg
    const after = argv.slice(i + 1)
    // Output flags right after the target are microagent's (src/cli/Argv.ts lifts them): the full CLI.
    if (after[0] === "--json" || after[0] === "--no-color" || after[0]?.startsWith("--output")) {
      return undefined
    }
    guest = after[0] === "--" ? after.slice(1) : after
    break
  }
  if (verb === undefined || target === undefined || (keep && rm)) return undefined
  if (verb === "exec") {
    if (guest.length === 0) return undefined
    return { verb, stateDir, json, keep, payload: { name: target, argv: guest, env, ...fields } }
  }
  return {
    verb,
    stateDir,
    json,
    keep,
    payload: { image: target, command: guest, env, keep, ...fields, backend: backend ?? defaultBackend() }
  }
}

/** The same resolution as `Home.resolveRoot`. */
export const runtimeSocketOf = (stateDir: string | undefined): string =>
  NodePath.join(
    NodePath.resolve(
      stateDir ?? process.env.MICROAGENT_HOME ?? NodePath.join(NodeOs.homedir(), ".microagent")
    ),
    "run",
    "runtime.sock"
  )

/** As `wantsJson` in Output.ts. */
const wantsJson = (explicit: boolean | undefined): boolean => {
  if (explicit !== undefined) return explicit
  const fromEnv = process.env.MICROAGENT_OUTPUT
  if (fromEnv === "json") return true
  if (fromEnv === "text") return false
  return !process.stdout.isTTY
}

/** The classified errors' kinds, by their wire tag (as in src/domain/Errors.ts). */
const kinds: Record<string, string> = {
  Transient: "transient",
  Permanent: "permanent",
  Conflict: "conflict",
  NotFound: "not_found",
  ResourceExhausted: "resource_exhausted",
  Unsupported: "unsupported",
  PolicyDenied: "policy_denied",
  InvalidInput: "permanent"
}

interface WireError {
  readonly _tag: string
  readonly message: string
  readonly remediation?: string
  readonly retryAfterMs?: number
}

/** `renderError` of Output.ts and `exitCodeFor` of Errors.ts, for an error off the wire. */
const reportError = (error: WireError, json: boolean): number => {
  const kind = kinds[error._tag]!
  const body = {
    kind,
    message: error.message,
    remediation: error.remediation ?? "",
    retryable: kind === "transient",
    ...(error._tag === "Transient" && error.retryAfterMs !== undefined
      ? { retry_after_ms: error.retryAfterMs }
      : {}),
    ...(error._tag === "InvalidInput" ? { usage: true } : {})
  }
  process.stderr.write(
    json
      ? `${JSON.stringify({ ok: false, error: body })}\n`
      : `error: ${body.message}\n${body.remediation ? `  ${body.remediation}\n` : ""}`
  )
  return error._tag === "InvalidInput" ? 2 : kind === "transient" ? 75 : 1
}

interface WireResult {
  readonly status: string
  readonly exitCode: number
  readonly stdout: string
  readonly stderr: string
  readonly error?: string
}

/** `reportResult` of RunCommands.ts. */
const reportResult = (extra: Record<string, unknown>, result: WireResult, json: boolean): number => {
  if (json) process.stdout.write(`${JSON.stringify({ ...extra, result })}\n`)
  else {
    process.stdout.write(result.stdout)
    if (result.stderr.length > 0) process.stderr.write(result.stderr)
    if (result.status === "timed_out") process.stderr.write(`microagent: command timed out\n`)
    if (result.status === "failed_to_start") {
      process.stderr.write(`microagent: ${result.error ?? "command failed to start"}\n`)
    }
  }
  return result.exitCode
}

type Exit =
  | {
    readonly _tag: "Success"
    readonly value: WireResult & {
      readonly workspace?: string
      readonly kept?: boolean
      readonly result?: WireResult
    }
  }
  | { readonly _tag: "Failure"; readonly cause: WireCause & { readonly error?: WireError } }

interface WireCause {
  readonly _tag: string
  readonly left?: WireCause
  readonly right?: WireCause
}

/** An encoded cause made only of interruptions (the runtime ended the call), as `Cause.isInterruptedOnly`. */
const interruptedOnly = (cause: WireCause): boolean => {
  const walk = (c: WireCause): { interrupted: boolean; other: boolean } => {
    if (c._tag === "Interrupt") return { interrupted: true, other: false }
    if (c._tag === "Empty") return { interrupted: false, other: false }
    if ((c._tag === "Sequential" || c._tag === "Parallel") && c.left !== undefined && c.right !== undefined) {
      const [l, r] = [walk(c.left), walk(c.right)]
      return { interrupted: l.interrupted || r.interrupted, other: l.other || r.other }
    }
    return { interrupted: false, other: true }
  }
  const { interrupted, other } = walk(cause)
  return interrupted && !other
}

/** What the full CLI prints for a successful call; the exit code. */
const reportSuccess = (call: FastCall, value: Extract<Exit, { _tag: "Success" }>["value"], json: boolean) => {
  if (call.verb === "exec") return reportResult({ workspace: call.payload.name }, value, json)
  if (call.keep && !json) process.stderr.write(`workspace: ${value.workspace}\n`)
  return reportResult({ workspace: value.workspace, kept: value.kept }, value.result!, json)
}

/**
 * Runs a plain `exec` or `run` against a listening runtime; resolves with the exit code, or
 * `undefined` (before anything was sent) when the full CLI must handle it. Ctrl-C interrupts the call
 * (the runtime tears down what it started, as for the full CLI) and exits 130.
 */
export const fastPath = (argv: ReadonlyArray<string>): Promise<number | undefined> => {
  const call = parseFast(argv)
  if (call === undefined) return Promise.resolve(undefined)
  const json = wantsJson(call.json)
  return new Promise((resolve) => {
    const socket = Net.createConnection({ path: runtimeSocketOf(call.stateDir) })
    let sent = false
    let settled = false
    let interrupted = false
    let buffered = ""
    const finish = (code: number | undefined) => {
      if (settled) return
      settled = true
      socket.destroy()
      resolve(code)
    }
    socket.once("connect", () => {
      sent = true
      // Output is written once the call has finished (the runtime has torn down what it started): a
      // reader that has gone (`| head`) ends us quietly with 141, as SIGPIPE would, as coreutils do.
      process.stdout.on("error", (error: NodeJS.ErrnoException) => {
        if (error.code !== "EPIPE") {
          process.stderr.write(`microagent: cannot write to stdout: ${error.message}\n`)
        }
        process.exit(error.code === "EPIPE" ? 141 : 1)
      })
      process.stderr.on("error", () => {})
      socket.write(
        `${
          JSON.stringify({ _tag: "Request", id: "1", tag: call.verb, payload: call.payload, headers: [] })
        }\n`
      )
      process.on("SIGINT", () => {
        // A second Ctrl-C does not wait for the runtime's teardown.
        if (interrupted) process.exit(130)
        interrupted = true
        socket.write(`${JSON.stringify({ _tag: "Interrupt", requestId: "1" })}\n`)
      })
    })
    // Decodes UTF-8 across chunk boundaries.
    socket.setEncoding("utf8")
    socket.on("data", (data: string) => {
      buffered += data
      for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
        const line = buffered.slice(0, nl)
        buffered = buffered.slice(nl + 1)
        if (line.length === 0) continue
        let message: { _tag: string; requestId?: string; exit?: Exit }
        try {
          message = JSON.parse(line)
        } catch {
          process.stderr.write(`microagent: internal error: the runtime sent a malformed line\n`)
          return finish(1)
        }
        if (message._tag !== "Exit" || message.requestId !== "1" || message.exit === undefined) continue
        const exit = message.exit
        if (interrupted) return finish(130)
        if (exit._tag === "Success") return finish(reportSuccess(call, exit.value, json))
        const error = exit.cause.error
        if (exit.cause._tag === "Fail" && error !== undefined && kinds[error._tag] !== undefined) {
          return finish(reportError(error, json))
        }
        if (interruptedOnly(exit.cause)) {
          return finish(reportError({
            _tag: "Transient",
            message: "the runtime stopped before it finished this request",
            remediation:
              "retry; a new runtime starts and picks the VMs up (`microagent gc` repairs leftovers)",
            retryAfterMs: 1000
          }, json))
        }
        process.stderr.write(`microagent: internal error: ${JSON.stringify(exit.cause)}\n`)
        return finish(1)
      }
    })
    // Nobody listening: the full CLI starts the runtime. Lost after sending: retryable, as in Layers.ts.
    const lost = (reason: string) => {
      if (settled) return
      if (!sent) return finish(undefined)
      if (interrupted) return finish(130)
      finish(reportError({
        _tag: "Transient",
        message: `lost the connection to the runtime: ${reason}`,
        remediation: "retry; a new runtime starts and picks the VMs up (`microagent gc` repairs leftovers)",
        retryAfterMs: 1000
      }, json))
    }
    socket.once("error", (error) => lost(error.message))
    socket.once("close", () => lost("the runtime closed the connection"))
  })
}

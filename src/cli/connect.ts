/**
 * `microagent connect WORKSPACE [-- CMD...]`: an interactive console through the runtime. On a
 * terminal the guest command gets a PTY, our terminal goes raw, resizes follow SIGWINCH and the
 * detach keys (default Ctrl-]) end the session, leaving the VM running; with piped stdin it is a plain
 * pipe (no raw mode, no detach keys). The guest command's exit code becomes ours.
 */
import { Args, Command, Options } from "@effect/cli"
import { Chunk, Deferred, Duration, Effect, Option, Queue, Stream } from "effect"
import { randomUUID } from "node:crypto"
import { InvalidInput, Transient } from "../domain/Errors.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { defined } from "../rpc/Rpcs.ts"
import { envOption, optionalDuration, orUndefined, parseEnv } from "./Flags.ts"
import { Invocation } from "./Invocation.ts"
import { withRuntime } from "./Layers.ts"

const namedKeys: Record<string, number> = { "@": 0, "[": 0x1b, "\\": 0x1c, "]": 0x1d, "^": 0x1e, "_": 0x1f }

/** `ctrl-]`, `ctrl-p,ctrl-q`, `x`: the bytes a terminal sends for them. */
export const parseDetachKeys = (spec: string): Effect.Effect<Uint8Array, InvalidInput> => {
  const bytes: Array<number> = []
  for (const key of spec.split(",")) {
    const ctrl = /^ctrl-(.)$/i.exec(key)
    if (ctrl !== null) {
      const c = ctrl[1]!
      const code = /[a-z]/i.test(c) ? c.toUpperCase().charCodeAt(0) & 0x1f : namedKeys[c]
      if (code !== undefined) {
        bytes.push(code)
        continue
      }
    } else if (key.length === 1 && key.charCodeAt(0) < 0x80) {
      bytes.push(key.charCodeAt(0))
      continue
    }
    return Effect.fail(
      new InvalidInput({
        message: `invalid --detach-keys "${spec}"`,
        remediation:
          "give keys separated by commas: a letter, or ctrl-LETTER, ctrl-@, ctrl-[, ctrl-\\, ctrl-], ctrl-^, ctrl-_"
      })
    )
  }
  return Effect.succeed(Uint8Array.from(bytes))
}

/** Finds the detach sequence in keystrokes that may split it across reads; holds back a partial match. */
export const detachScanner = (sequence: Uint8Array) => {
  let matched = 0
  return (chunk: Uint8Array): { readonly pass: Uint8Array; readonly detach: boolean } => {
    const pass: Array<number> = []
    for (const byte of chunk) {
      if (byte === sequence[matched]) {
        matched++
        if (matched === sequence.length) return { pass: Uint8Array.from(pass), detach: true }
        continue
      }
      // A broken partial match was keystrokes after all.
      for (let i = 0; i < matched; i++) pass.push(sequence[i]!)
      matched = byte === sequence[0] ? 1 : 0
      if (matched === 0) pass.push(byte)
      if (matched === sequence.length) return { pass: Uint8Array.from(pass), detach: true }
    }
    return { pass: Uint8Array.from(pass), detach: false }
  }
}

type Input =
  | { readonly _tag: "Data"; readonly data: Uint8Array }
  | { readonly _tag: "Eof" }
  | { readonly _tag: "Resize"; readonly rows: number; readonly cols: number }

const terminalSize = () => {
  const rows = process.stdout.isTTY ? process.stdout.rows : undefined
  const cols = process.stdout.isTTY ? process.stdout.columns : undefined
  return { rows: rows && rows > 0 ? rows : 24, cols: cols && cols > 0 ? cols : 80 }
}

/** Our stdin into `inputs` (scanning for the detach keys on a terminal) for as long as the scope lives. */
const readStdin = (
  inputs: Queue.Queue<Input>,
  detached: Deferred.Deferred<void>,
  scan: ((chunk: Uint8Array) => { pass: Uint8Array; detach: boolean }) | undefined
) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const onData = (chunk: Buffer) => {
        const { detach, pass } = scan === undefined
          ? { pass: new Uint8Array(chunk), detach: false }
          : scan(chunk)
        if (pass.length > 0) Queue.unsafeOffer(inputs, { _tag: "Data", data: pass })
        if (detach) Deferred.unsafeDone(detached, Effect.void)
      }
      const onEnd = () => Queue.unsafeOffer(inputs, { _tag: "Eof" })
      const onResize = () => Queue.unsafeOffer(inputs, { _tag: "Resize", ...terminalSize() })
      process.stdin.on("data", onData)
      process.stdin.once("end", onEnd)
      if (process.stdout.isTTY) process.stdout.on("resize", onResize)
      process.stdin.resume()
      return { onData, onEnd, onResize }
    }),
    (listeners) =>
      Effect.sync(() => {
        process.stdin.off("data", listeners.onData)
        process.stdin.off("end", listeners.onEnd)
        process.stdout.off("resize", listeners.onResize)
        process.stdin.pause()
      })
  )

/** Sends what accumulated since the last call returned: one call for the keystrokes, one per resize. */
const sendInputs = (client: MicroagentClient["Type"], sessionId: string, inputs: Queue.Queue<Input>) =>
  Effect.forever(Effect.gen(function*() {
    const first = yield* Queue.take(inputs)
    const batch = [first, ...Chunk.toReadonlyArray(yield* Queue.takeAll(inputs))]
    let data: Array<Uint8Array> = []
    const flush = (eof: boolean) =>
      Effect.suspend(() => {
        if (data.length === 0 && !eof) return Effect.void
        const merged = Buffer.concat(data)
        data = []
        return client.connectInput(
          defined({ sessionId, data: new Uint8Array(merged), eof: eof || undefined })
        )
      })
    for (const input of batch) {
      if (input._tag === "Data") data.push(input.data)
      else if (input._tag === "Eof") yield* flush(true)
      else {
        yield* flush(false)
        yield* client.connectResize({ sessionId, rows: input.rows, cols: input.cols })
      }
    }
    yield* flush(false)
  }))

export const connectCommand = Command.make("connect", {
  detachKeys: Options.text("detach-keys").pipe(
    Options.withPseudoName("KEYS"),
    Options.withDescription("keys that detach, leaving the VM running (default ctrl-]; e.g. ctrl-p,ctrl-q)"),
    Options.optional
  ),
  env: envOption,
  send: Options.text("send").pipe(
    Options.withPseudoName("LINE"),
    Options.withDescription(
      "send one line to the shell instead of the keyboard, print what comes back, exit with the shell"
    ),
    Options.optional
  ),
  timeout: optionalDuration(
    "timeout",
    "with --send: give up waiting for the shell after this long (default 5s)"
  ),
  name: Args.text({ name: "workspace" }).pipe(Args.withDescription("a running workspace"))
}, (options) =>
  Effect.gen(function*() {
    const invocation = yield* Invocation
    if (invocation.json === true) {
      return yield* new InvalidInput({
        message: "connect is an interactive session; it has no JSON output",
        remediation: `for structured output use: microagent exec --stream --json ${options.name} -- CMD`
      })
    }
    const detachKeys = yield* parseDetachKeys(orUndefined(options.detachKeys) ?? "ctrl-]")
    const env = yield* parseEnv(options.env)
    const send = orUndefined(options.send)
    if (send === undefined && Option.isSome(options.timeout)) {
      return yield* new InvalidInput({
        message: "--timeout needs --send",
        remediation: `microagent connect --send 'CMD' --timeout ${options.timeout.value}s ${options.name}`
      })
    }
    // With --send the shell reads that one line, then end of input, so it exits once the line ran.
    const interactive = send === undefined && process.stdin.isTTY === true
    const sessionId = randomUUID()

    yield* withRuntime(Effect.scoped(Effect.gen(function*() {
      const client = yield* MicroagentClient
      const inputs = yield* Queue.unbounded<Input>()
      const detached = yield* Deferred.make<void>()
      if (interactive) {
        yield* Effect.acquireRelease(
          Effect.sync(() => process.stdin.setRawMode(true)),
          () => Effect.sync(() => process.stdin.setRawMode(false))
        )
      }
      if (send === undefined) {
        yield* readStdin(inputs, detached, interactive ? detachScanner(detachKeys) : undefined)
      } else {
        yield* Queue.offerAll(inputs, [
          { _tag: "Data", data: new TextEncoder().encode(`${send}\n`) },
          { _tag: "Eof" }
        ])
      }
      const session = client.connect(defined({
        name: options.name,
        sessionId,
        argv: [...invocation.guestArgv],
        tty: interactive ? terminalSize() : undefined,
        env: Object.keys(env).length > 0 ? env : undefined
      })).pipe(
        Stream.runForEach((output) => {
          switch (output._tag) {
            case "Ready":
              // The session takes input from now on; a call failing means it ended.
              return Effect.forkScoped(Effect.ignore(sendInputs(client, sessionId, inputs)))
            case "Stdout":
              return Effect.sync(() => process.stdout.write(output.data))
            case "Stderr":
              return Effect.sync(() => process.stderr.write(output.data))
            case "Exit":
              return Effect.sync(() => {
                process.exitCode = output.result.exitCode
              })
          }
        })
      )
      if (send !== undefined) {
        const seconds = orUndefined(options.timeout) ?? 5
        return yield* session.pipe(
          Effect.timeoutFail({
            duration: Duration.seconds(seconds),
            onTimeout: () =>
              new Transient({
                message:
                  `the shell of ${options.name} did not finish within ${seconds}s (output so far printed)`,
                remediation: "give a longer --timeout, or use `microagent exec` for long commands",
                retryAfterMs: 1000
              })
          })
        )
      }
      const outcome = yield* Effect.raceFirst(
        Effect.as(session, "exited" as const),
        Effect.as(Deferred.await(detached), "detached" as const)
      )
      if (outcome === "detached") {
        process.stderr.write(`\r\nmicroagent: detached from ${options.name} (it keeps running)\r\n`)
        process.exitCode = 0
      }
    })))
  })).pipe(
    Command.withDescription("an interactive shell (or CMD) in a running workspace; detach with ctrl-]")
  )

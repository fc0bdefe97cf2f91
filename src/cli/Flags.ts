/**
 * Options shared by several commands, and parsing of values the CLI takes as text.
 */
import { HelpDoc, Options, ValidationError } from "@effect/cli"
import { Effect, Either, Option } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { parseDuration } from "../domain/Duration.ts"
import { InvalidInput } from "../domain/Errors.ts"
import { decodeSpec, type Spec } from "../domain/Spec.ts"
import { secretFlag, volumeFlag } from "./volume.ts"

export const envOption = Options.text("env").pipe(
  Options.withAlias("e"),
  Options.withPseudoName("KEY=VALUE"),
  Options.withDescription("set a guest environment variable (repeatable)"),
  Options.repeated
)

/** `KEY=VALUE` pairs to a record; a malformed pair is a usage error naming it. */
export const parseEnv = (pairs: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const env: Record<string, string> = {}
    for (const pair of pairs) {
      const at = pair.indexOf("=")
      const key = at > 0 ? pair.slice(0, at) : ""
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) {
        return yield* new InvalidInput({
          message: `invalid --env "${pair}"`,
          remediation: "write KEY=VALUE, where KEY is letters, digits and '_', not starting with a digit"
        })
      }
      env[key] = pair.slice(at + 1)
    }
    return env
  })

/** `--output NAME=/guest/path` (repeatable): outputs collected as artifacts (see docs/files.md). */
export const outputOption = Options.text("output").pipe(
  Options.withPseudoName("NAME=/PATH"),
  Options.withDescription("a guest path kept as artifact NAME (repeatable)"),
  Options.repeated
)

export const fileCopyOption = Options.text("file-copy").pipe(
  Options.withPseudoName("SRC:DST[:MODE]"),
  Options.withDescription(
    "copy a host file into the guest at every start, before the entrypoint (MODE octal; repeatable)"
  ),
  Options.repeated
)

export const setupOption = Options.text("setup").pipe(
  Options.withPseudoName("CMD"),
  Options.withDescription("shell command run once, before the first start's entrypoint (repeatable)"),
  Options.repeated
)

export const setupFileOption = Options.text("setup-file").pipe(
  Options.withPseudoName("FILE"),
  Options.withDescription("a file whose text is one setup command, after --setup (repeatable)"),
  Options.repeated
)

export const optionalInt = (name: string, description: string) =>
  Options.integer(name).pipe(Options.withDescription(description), Options.optional)

/**
 * A duration flag (`--timeout 30s`, `5m`, `1h30m`, `500ms`, or plain seconds), as seconds. A value
 * that is not one is a usage error saying how to write it.
 */
export const optionalDuration = (name: string, description: string) =>
  Options.text(name).pipe(
    Options.withPseudoName("DURATION"),
    Options.withDescription(description),
    Options.mapEffect((text) =>
      Either.match(parseDuration(text), {
        onLeft: (reason) =>
          Effect.fail(
            ValidationError.invalidValue(
              HelpDoc.p(
                `invalid --${name} "${text}": ${reason}; write a duration such as 30s, 5m, 1h30m or 500ms`
              )
            )
          ),
        onRight: (seconds) =>
          seconds > 0
            ? Effect.succeed(seconds)
            : Effect.fail(ValidationError.invalidValue(HelpDoc.p(`--${name} must be longer than zero`)))
      })
    ),
    Options.optional
  )

/** `--ttl`: a lease as a duration (`30m`, `7d`) or seconds; 0 means no lease. */
export const ttlOption = Options.text("ttl").pipe(
  Options.withPseudoName("DURATION"),
  Options.withDescription("a lease: past it, `gc` stops it (30m, 7d; 0: none)"),
  Options.mapEffect((text) =>
    Either.match(parseDuration(text), {
      onLeft: (reason) =>
        Effect.fail(
          ValidationError.invalidValue(
            HelpDoc.p(`invalid --ttl "${text}": ${reason}; write a duration such as 30m, 12h or 7d, or 0`)
          )
        ),
      onRight: (seconds) => Effect.succeed(seconds)
    })
  ),
  Options.optional
)

/** A byte count flag (`--stdout-limit 65536`). */
export const optionalBytes = (name: string, description: string) =>
  Options.integer(name).pipe(
    Options.withPseudoName("BYTES"),
    Options.withDescription(description),
    Options.mapEffect((n) =>
      n >= 0
        ? Effect.succeed(n)
        : Effect.fail(ValidationError.invalidValue(HelpDoc.p(`--${name} cannot be negative`)))
    ),
    Options.optional
  )

/** `--refuse-devices`: fail on an image whose layers hold character or block devices. */
export const refuseDevicesOption = Options.boolean("refuse-devices").pipe(
  Options.withDescription(
    "refuse images that hold device nodes"
  )
)

/** `create`'s model mediation flags (`run` takes $MICROAGENT_MODEL_MEDIATION and $MICROAGENT_MODEL_POLICY_FILE). */
export const modelMediationOptions = {
  modelMediation: Options.choice("model-mediation", ["off", "local-allow", "policy"]).pipe(
    Options.withPseudoName("MODE"),
    Options.withDescription("off (default), local-allow or policy (audited)"),
    Options.optional
  ),
  modelPolicyFile: Options.text("model-policy-file").pipe(
    Options.withPseudoName("FILE"),
    Options.withDescription("the model policy for --model-mediation policy"),
    Options.optional
  )
}

export const workspaceOptions = {
  name: Options.text("name").pipe(
    Options.withPseudoName("NAME"),
    Options.withDescription("workspace name (default: generated)"),
    Options.optional
  ),
  env: envOption,
  profile: Options.choice("profile", ["tiny", "small", "medium", "large"]).pipe(
    Options.withDescription("tiny, small, medium or large (`microagent profiles`)"),
    Options.optional
  ),
  memory: Options.integer("memory").pipe(
    Options.withPseudoName("MIB"),
    Options.withDescription("guest memory in MiB (default 512)"),
    Options.optional
  ),
  cpus: optionalInt("cpus", "virtual CPUs (default 2)"),
  sizeMiB: optionalInt("size-mib", "root disk size (default: the content plus room)"),
  file: Options.file("file").pipe(
    Options.withPseudoName("SPEC"),
    Options.withDescription("a microagent.yaml spec; flags override its fields"),
    Options.optional
  ),
  hostname: Options.text("hostname").pipe(
    Options.withPseudoName("NAME"),
    Options.withDescription("guest hostname (default: the workspace name)"),
    Options.optional
  ),
  network: Options.text("network").pipe(
    Options.withPseudoName("MODE"),
    Options.withDescription(
      "user (default), isolated or NETWORK (repeatable)"
    ),
    Options.repeated
  ),
  publish: Options.text("publish").pipe(
    Options.withAlias("p"),
    Options.withPseudoName("[IP:]H:G"),
    Options.withDescription("publish guest TCP port G on host port H (repeatable)"),
    Options.repeated
  ),
  egress: Options.choice("egress", ["broker", "mitm", "off"]).pipe(
    Options.withDescription(
      "broker (default), mitm or off (docs/egress.md)"
    ),
    Options.optional
  ),
  egressAllow: Options.text("egress-allow").pipe(
    Options.withPseudoName("DEST"),
    Options.withDescription("allow HOST, .SUFFIX or CIDR[:PORT] (repeatable)"),
    Options.repeated
  ),
  egressPassthrough: Options.text("egress-passthrough").pipe(
    Options.withPseudoName("DST"),
    Options.withDescription("mitm: allow DST, never intercepted (repeatable)"),
    Options.repeated
  ),
  credSwap: Options.text("cred-swap").pipe(
    Options.withPseudoName("P[=REF]"),
    Options.withDescription("mitm: the host sends provider P's key (repeatable)"),
    Options.repeated
  ),
  egressSwapConfig: Options.text("egress-swap-config").pipe(
    Options.withPseudoName("F"),
    Options.withDescription("mitm: credential swaps, YAML/JSON file F"),
    Options.optional
  ),
  egressLockAllowlist: Options.boolean("egress-lock-allowlist").pipe(
    Options.withDescription("reach only --egress-allow destinations")
  ),
  egressMaxConns: optionalInt("egress-max-conns", "concurrent guest connections the mediator admits"),
  egressMaxTotalBytes: optionalBytes(
    "egress-max-total-bytes",
    "bytes per connection before the mediator cuts it"
  ),
  egressMaxBps: optionalBytes("egress-max-bps", "bytes/s each way of a connection (slowed, not cut)"),
  egressPolicy: Options.text("egress-policy").pipe(
    Options.withPseudoName("FILE"),
    Options.withDescription("YAML/JSON with allow and passthrough lists"),
    Options.optional
  ),
  model: Options.text("model").pipe(
    Options.withPseudoName("REF"),
    Options.withDescription("a GGUF model the guest reaches at $OPENAI_BASE_URL"),
    Options.optional
  ),
  broker: Options.text("broker").pipe(
    Options.withPseudoName("SPEC"),
    Options.withDescription("proxy with secrets the guest never sees"),
    Options.repeated
  ),
  bootTimeout: optionalDuration("boot-timeout", "how long to wait for the guest agent (default 60s)"),
  ttl: ttlOption,
  volume: volumeFlag,
  secret: secretFlag,
  refuseDevices: refuseDevicesOption
}

/** `create --constraint`: with --cluster, labels the chosen runner must carry. */
export const constraintOption = Options.text("constraint").pipe(
  Options.withPseudoName("KEY=VALUE"),
  Options.repeated,
  Options.withDescription("a runner label to place on (--cluster; repeatable)")
)

export const readSpec = (file: Option.Option<string>) =>
  Option.match(file, {
    onNone: () => Effect.succeed<Spec>({}),
    onSome: (path) =>
      Effect.gen(function*() {
        const text = yield* Effect.try({
          try: () => NodeFs.readFileSync(path, "utf8"),
          catch: (cause) =>
            new InvalidInput({
              message: `cannot read spec ${path}: ${String(cause)}`,
              remediation: "check the path"
            })
        })
        return yield* Either.match(decodeSpec(text, NodePath.basename(path)), {
          onLeft: Effect.fail,
          onRight: Effect.succeed
        })
      })
  })

export const orUndefined = <A>(option: Option.Option<A>): A | undefined => Option.getOrUndefined(option)

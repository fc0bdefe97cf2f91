/**
 * What lets an MCP client written for the original microagent use this server unchanged: its tool
 * names where ours differ (served as aliases of our tools), its argument names where ours differ
 * (accepted, converted, and listed in the input schemas), `principal` on every tool, and
 * `confirm_token`, which binds a destructive call to the preview its caller saw. docs/mcp.md has the
 * table of every original tool and what it is here.
 */
import { Either, Schema } from "effect"
import * as NodeCrypto from "node:crypto"
import { parseDuration } from "../domain/Duration.ts"
import { Conflict, InvalidInput } from "../domain/Errors.ts"
import type { AnyTool } from "./Tool.ts"

/** Accepted by every tool: who the call is made for. It is echoed in the result's `meta`. */
export const principalField = {
  principal: Schema.optional(
    Schema.String.pipe(Schema.maxLength(256)).annotations({
      description: "who the call is made for (an agent or user id); echoed in meta.principal"
    })
  )
}

/** Taken by destructive tools: the token a preview of the same call returned. */
export const confirmTokenField = {
  confirm_token: Schema.optional(
    Schema.String.pipe(Schema.maxLength(512)).annotations({
      description: "the confirm_token a preview: true call with the same arguments returned; the call is "
        + "refused unless they match and the token is under 10 minutes old"
    })
  )
}

/** An argument under the original's name: its schema for the listing, and how it becomes ours. */
interface ArgumentAlias {
  readonly name: string
  readonly target: string
  readonly schema: Schema.Schema.Any
  /** The value under our name, or why this one cannot be. */
  readonly convert: (value: unknown) => Either.Either<unknown, string>
}

const same = (value: unknown) => Either.right(value)

const duration = (value: unknown): Either.Either<unknown, string> => {
  if (typeof value === "number") return value > 0 ? Either.right(value) : Either.left("must be above zero")
  if (typeof value !== "string") return Either.left('expected a duration such as "30s" or "5m"')
  return Either.flatMap(
    parseDuration(value),
    (seconds) => (seconds > 0 ? Either.right(seconds) : Either.left("must be above zero"))
  )
}

const milliseconds = (value: unknown): Either.Either<unknown, string> =>
  typeof value === "number" && Number.isInteger(value) && value > 0
    ? Either.right(value / 1000)
    : Either.left("expected a whole number of milliseconds above zero")

/** `command`: a string runs in `sh -c`; an array is the argv. */
const legacyCommand = (value: unknown): Either.Either<unknown, string> => {
  if (typeof value === "string" && value.trim().length > 0) return Either.right(["sh", "-c", value])
  if (Array.isArray(value) && value.length > 0 && value.every((word) => typeof word === "string")) {
    return Either.right(value)
  }
  return Either.left("expected a command string (run with sh -c) or a non-empty array of strings")
}

const DurationArgument = Schema.Union(Schema.String, Schema.Number)

const execAliases: ReadonlyArray<ArgumentAlias> = [
  {
    name: "timeout_ms",
    target: "timeout_seconds",
    schema: Schema.Int.annotations({ description: "the original's name: timeout_seconds in milliseconds" }),
    convert: milliseconds
  },
  {
    name: "output_limit_bytes_stdout",
    target: "stdout_limit",
    schema: Schema.Int.annotations({ description: "the original's name for stdout_limit" }),
    convert: same
  },
  {
    name: "output_limit_bytes_stderr",
    target: "stderr_limit",
    schema: Schema.Int.annotations({ description: "the original's name for stderr_limit" }),
    convert: same
  }
]

export const argumentAliases: Readonly<Record<string, ReadonlyArray<ArgumentAlias>>> = {
  "workspace.exec": [
    ...execAliases,
    {
      name: "command",
      target: "argv",
      schema: Schema.Union(Schema.String, Schema.Array(Schema.String)).annotations({
        description: "the original's legacy form of argv: a string (run with sh -c) or an array"
      }),
      convert: legacyCommand
    }
  ],
  "workspace.run": [
    ...execAliases,
    {
      name: "exec",
      target: "command",
      schema: Schema.Union(Schema.String, Schema.Array(Schema.String)).annotations({
        description: "the original's name for command: a string (run with sh -c) or an array"
      }),
      convert: legacyCommand
    }
  ],
  "workspace.wait": [
    {
      name: "timeout",
      target: "timeout_seconds",
      schema: DurationArgument.annotations({ description: 'the original\'s form: a duration such as "5m"' }),
      convert: duration
    },
    {
      name: "interval",
      target: "interval_seconds",
      schema: DurationArgument.annotations({ description: 'the original\'s form: a duration such as "1s"' }),
      convert: duration
    }
  ],
  "workspace.halt": [
    {
      name: "timeout",
      target: "timeout_seconds",
      schema: DurationArgument.annotations({ description: 'the original\'s form: a duration such as "15s"' }),
      convert: duration
    }
  ],
  "images.pull": [
    {
      name: "arch",
      target: "platform",
      schema: Schema.Literal("amd64", "arm64", "x86_64", "aarch64").annotations({
        description: "the original's name: the CPU architecture (linux/amd64 or linux/arm64)"
      }),
      convert: (value) =>
        value === "amd64" || value === "x86_64"
          ? Either.right("linux/amd64")
          : value === "arm64" || value === "aarch64"
          ? Either.right("linux/arm64")
          : Either.left("expected amd64 or arm64")
    }
  ]
}

/** The original's tool names that differ from ours, each served by our tool of the same behaviour. */
export const toolAliases: ReadonlyArray<{ readonly name: string; readonly of: string }> = [
  { name: "cp", of: "workspace.cp" },
  { name: "profiles.list", of: "microagent.profiles" },
  { name: "host.inspect", of: "doctor.check" }
]

/** Our tools again under the original's names. */
export const aliasTools = (tools: ReadonlyArray<AnyTool>): ReadonlyArray<AnyTool> =>
  toolAliases.flatMap(({ name, of }) => {
    const tool = tools.find((t) => t.name === of)
    return tool === undefined
      ? []
      : [{ ...tool, name, description: `${tool.description} (The original microagent's name for ${of}.)` }]
  })

/** The input fields of a tool's argument aliases, for its listed JSON Schema. */
export const aliasFields = (tool: string): Record<string, Schema.optional<Schema.Schema.Any>> =>
  Object.fromEntries(
    (argumentAliases[tool] ?? []).map((alias) => [alias.name, Schema.optional(alias.schema)])
  )

/** The original's argument names rewritten to ours; both names for one argument is an error. */
export const normalizeArguments = (
  tool: string,
  payload: unknown
): Either.Either<unknown, InvalidInput> => {
  const aliases = argumentAliases[tool]
  if (aliases === undefined || typeof payload !== "object" || payload === null || Array.isArray(payload)) {
    return Either.right(payload)
  }
  const out: Record<string, unknown> = { ...(payload as Record<string, unknown>) }
  const problems: Array<string> = []
  for (const alias of aliases) {
    if (!(alias.name in out)) continue
    const value = out[alias.name]
    delete out[alias.name]
    if (alias.target in out) {
      problems.push(`${alias.name}: give either ${alias.name} or ${alias.target}, not both`)
      continue
    }
    Either.match(alias.convert(value), {
      onLeft: (reason) => problems.push(`${alias.name}: ${reason}`),
      onRight: (converted) => {
        out[alias.target] = converted
      }
    })
  }
  return problems.length === 0 ? Either.right(out) : Either.left(
    new InvalidInput({
      message: `${tool}: invalid arguments: ${problems.join("; ")}`,
      remediation: `see the input schema of ${tool} in tools/list or microagent.describe`
    })
  )
}

// confirm_token --------------------------------------------------------------------------------------

const tokenLifetimeMs = 10 * 60 * 1000

/** A stable text for arguments: keys sorted at every level. */
const canonical = (value: unknown): string => {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`
  if (value !== null && typeof value === "object") {
    return `{${
      Object.keys(value as Record<string, unknown>).sort().map((key) =>
        `${JSON.stringify(key)}:${canonical((value as Record<string, unknown>)[key])}`
      ).join(",")
    }}`
  }
  return JSON.stringify(value) ?? "null"
}

/**
 * Issues and checks confirm tokens: an expiry and an HMAC of the tool and its arguments under a key
 * that lives only in this server process, so a token cannot be forged, moved to other arguments, or
 * kept beyond its ten minutes.
 */
export const makeConfirmTokens = (now: () => number = Date.now) => {
  const key = NodeCrypto.randomBytes(32)
  const sign = (tool: string, args: unknown, expires: number) =>
    NodeCrypto.createHmac("sha256", key).update(`${tool}\n${expires}\n${canonical(args)}`).digest("base64url")
  return {
    issue: (tool: string, args: unknown): string => {
      const expires = now() + tokenLifetimeMs
      return `${expires}.${sign(tool, args, expires)}`
    },
    check: (tool: string, args: unknown, token: string): Either.Either<void, Conflict> => {
      const [expiresText, signature] = token.split(".")
      const expires = Number(expiresText)
      const expected = Number.isFinite(expires) ? sign(tool, args, expires) : ""
      const valid = signature !== undefined && signature.length === expected.length
        && NodeCrypto.timingSafeEqual(Buffer.from(signature), Buffer.from(expected))
      if (!valid) {
        return Either.left(
          new Conflict({
            message: `${tool}: confirm_token does not match these arguments`,
            remediation:
              "call it with preview: true and the same arguments, then pass the confirm_token it returns"
          })
        )
      }
      if (now() > expires) {
        return Either.left(
          new Conflict({
            message: `${tool}: confirm_token has expired`,
            remediation: "preview the call again for a fresh confirm_token"
          })
        )
      }
      return Either.right(undefined)
    }
  }
}

/**
 * `microagent registry login|logout|list` (`ls` for list): the credentials `image pull` and `image push`
 * use, in $REGISTRY_AUTH_FILE or <state-dir>/auth.json (0600). A login is checked against the registry
 * before anything is saved; no listing ever shows a password.
 */
import { Args, Command, Options } from "@effect/cli"
import { Effect, Option } from "effect"
import { InvalidInput } from "../domain/Errors.ts"
import { RegistryHttp } from "../layers/registry/Http.ts"
import { registryList, registryLogin, registryLogout } from "../programs/Image.ts"
import { Home } from "../services/Home.ts"
import type { Registry } from "../services/Registry.ts"
import { Invocation } from "./Invocation.ts"
import { emit, table } from "./Output.ts"

/** Runs `effect` with the HTTP registry client of this invocation's state directory (no database). */
const withRegistry = <A, E>(effect: Effect.Effect<A, E, Registry>) =>
  Effect.flatMap(
    Invocation,
    (invocation) => Effect.provide(effect, RegistryHttp.layer(Home.resolveRoot(invocation.stateDir)))
  )

const hostArg = Args.text({ name: "registry" }).pipe(
  Args.withDescription("registry host[:port], e.g. ghcr.io or 127.0.0.1:5000")
)

/** All of stdin, without its final line break (`echo "$TOKEN" | … --password-stdin`). */
const readStdin = Effect.tryPromise({
  try: async () => {
    const chunks: Array<Buffer> = []
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer)
    return Buffer.concat(chunks).toString("utf8").replace(/\r?\n$/, "")
  },
  catch: (cause) => new InvalidInput({ message: `cannot read the password from stdin: ${String(cause)}` })
})

const login = Command.make("login", {
  username: Options.text("username").pipe(Options.withAlias("u"), Options.withDescription("user name")),
  password: Options.text("password").pipe(
    Options.withAlias("p"),
    Options.withDescription("password (visible to other users in the process list: prefer --password-stdin)"),
    Options.optional
  ),
  passwordStdin: Options.boolean("password-stdin").pipe(
    Options.withDescription("read the password (or token) from stdin")
  ),
  insecureRegistry: Options.boolean("insecure-registry").pipe(
    Options.withDescription("allow plain http to this registry (loopback registries always may)")
  ),
  registry: hostArg
}, (o) =>
  Effect.gen(function*() {
    if (Option.isSome(o.password) && o.passwordStdin) {
      return yield* new InvalidInput({
        message: "give the password with --password-stdin or -p, not both",
        remediation: 'echo "$TOKEN" | microagent registry login HOST -u USER --password-stdin'
      })
    }
    if (Option.isNone(o.password) && !o.passwordStdin) {
      return yield* new InvalidInput({
        message: "no password: give --password-stdin (or -p PASS)",
        remediation: 'echo "$TOKEN" | microagent registry login HOST -u USER --password-stdin'
      })
    }
    const password = Option.isSome(o.password) ? o.password.value : yield* readStdin
    if (password.length === 0) {
      return yield* new InvalidInput({
        message: "the password is empty",
        remediation:
          "pipe it in: printf '%s' \"$PASSWORD\" | microagent registry login HOST -u USER --password-stdin"
      })
    }
    const saved = yield* withRegistry(
      registryLogin(o.registry, { username: o.username, password }, { insecureRegistry: o.insecureRegistry })
    )
    yield* emit(
      { registry: saved.registry, username: o.username, file: saved.file },
      () => `logged in to ${saved.registry} as ${o.username} (saved in ${saved.file})`
    )
  })).pipe(Command.withDescription("check a registry login and save it for pull and push"))

const logout = Command.make(
  "logout",
  { registry: hostArg },
  ({ registry }) =>
    withRegistry(registryLogout(registry)).pipe(
      Effect.flatMap((r) =>
        emit(
          { registry: r.registry, file: r.file },
          () => `removed the login for ${r.registry} from ${r.file}`
        )
      )
    )
).pipe(Command.withDescription("remove a saved registry login"))

const listHandler = () =>
  withRegistry(registryList).pipe(
    Effect.flatMap(({ logins }) =>
      emit(
        { logins: logins.map((l) => ({ registry: l.registry, username: l.username, source: l.source })) },
        () =>
          logins.length === 0
            ? "no saved registry logins"
            : table(
              ["REGISTRY", "USERNAME", "SOURCE"],
              logins.map((l) => [l.registry, l.username ?? "-", l.source])
            )
      )
    )
  )

const list = Command.make("list", {}, listHandler).pipe(
  Command.withDescription("list saved registry logins: hosts, usernames, files (alias: ls)")
)
const ls = Command.make("ls", {}, listHandler).pipe(Command.withDescription("list saved registry logins"))

export const registryCommand = Command.make("registry").pipe(
  Command.withDescription("log in to registries for image pull and push"),
  Command.withSubcommands([login, logout, list, ls])
)

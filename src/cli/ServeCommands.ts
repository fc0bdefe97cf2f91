/**
 * `serve`: the agent and application surfaces, both thin clients of the state directory's runtime
 * (started on demand), which runs the programs and holds the VMs. `serve rpc` puts a socket of the
 * caller's choosing in front of it; `serve mcp` is an MCP server on stdio, started by an MCP client.
 * `--backend` sets the backend of new workspaces.
 */
import { Command, Options } from "@effect/cli"
import { Effect, Layer, Logger, Option } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { InvalidInput } from "../domain/Errors.ts"
import {
  defaultForgetAfterSeconds,
  defaultLockExpiryMs,
  parseCapacity,
  parseHostPort,
  parseLabels,
  redact
} from "../domain/Placement.ts"
import { defaultBackend } from "../layers/backends/Backends.ts"
import * as Database from "../layers/state/Database.ts"
import * as SqliteStateStore from "../layers/state/SqliteStateStore.ts"
import { HostAccess, hostRootsVariable, parseGrants } from "../mcp/HostAccess.ts"
import { Idempotency } from "../mcp/Idempotency.ts"
import { serveStdio } from "../mcp/Server.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { layerForwardingServer } from "../rpc/Server.ts"
import { Home } from "../services/Home.ts"
import { Invocation, type InvocationShape } from "./Invocation.ts"

/** Logs go to stderr: stdout is the protocol's (MCP) or the caller's. */
const stderrLogger = Logger.replace(Logger.defaultLogger, Logger.withConsoleError(Logger.logfmtLogger))

/** The state directory's runtime, or with `--cluster` the cluster. */
const clientLayer = (invocation: InvocationShape) =>
  invocation.cluster !== undefined
    ? Layer.unwrapEffect(
      Effect.map(Effect.promise(() => import("../cluster/Client.ts")), (ClusterClient) =>
        ClusterClient.layer({ url: invocation.cluster! }))
    )
    : MicroagentClient.layerRuntime(Home.resolveRoot(invocation.stateDir))

const rpcCommand = Command.make("rpc", {
  socket: Options.text("socket").pipe(
    Options.withPseudoName("PATH"),
    Options.withDescription("unix socket to listen on (made 0600; a missing directory is made 0700)")
  )
}, ({ socket }) =>
  Effect.gen(function*() {
    const invocation = yield* Invocation
    const path = NodePath.resolve(socket)
    const runtime = clientLayer(invocation)
    const server = layerForwardingServer({
      socket: path,
      defaultBackend: invocation.backend ?? defaultBackend()
    })
    yield* Effect.scoped(Effect.gen(function*() {
      yield* Layer.build(server.pipe(Layer.provide(runtime)))
      process.stderr.write(`microagent: RPC API listening on ${path}\n`)
      return yield* Effect.never
    }))
  }).pipe(Effect.provide(stderrLogger))).pipe(
    Command.withDescription("serve the RPC API on a unix socket of your choosing until interrupted")
  )

const mcpGuidance = `microagent serve mcp speaks the Model Context Protocol on stdin and stdout; an MCP client
starts it. Configure your client with, for example:

  {"mcpServers": {"microagent": {"command": "microagent", "args": ["serve", "mcp"]}}}

Its tools reach no host files and no secrets unless granted: add "--host-root", "DIR" to "args" for host
files below DIR, "--allow-secret", "NAME" for the variable NAME. See docs/mcp.md for the tools and the
host-access policy.
`

const mcpCommand = Command.make("mcp", {
  hostRoots: Options.text("host-root").pipe(
    Options.repeated,
    Options.withDescription(
      `a host directory MCP clients may read and write below (repeatable; also $${hostRootsVariable}); none: no host file access`
    )
  ),
  allowSecret: Options.text("allow-secret").pipe(
    Options.repeated,
    Options.withDescription(
      "a secret MCP clients may use: NAME (this environment's variable NAME) or NAME=REF"
    )
  ),
  allowSecretEnv: Options.text("allow-secret-env").pipe(
    Options.repeated,
    Options.withDescription("environment variables env: references may name, e.g. 'APP_*' (repeatable)")
  )
}, ({ allowSecret, allowSecretEnv, hostRoots }) =>
  Effect.gen(function*() {
    if (process.stdin.isTTY) {
      process.stderr.write(mcpGuidance)
      return yield* new InvalidInput({
        message: "serve mcp talks to an MCP client over stdio, not to a terminal",
        remediation: "configure it as an MCP server in your client (see above)"
      })
    }
    const invocation = yield* Invocation
    const root = Home.resolveRoot(invocation.stateDir)
    const grants = yield* parseGrants({
      roots: hostRoots,
      allowSecret,
      allowSecretEnv,
      env: process.env[hostRootsVariable],
      cwd: process.cwd()
    })
    const database = Database.layer.pipe(Layer.provide(Home.layer(root)))
    const idempotency = Idempotency.layer.pipe(Layer.provide(database))
    // The store only records denials in the events of the workspace they concern.
    const access = HostAccess.layer(grants).pipe(
      Layer.provide(SqliteStateStore.layer),
      Layer.provide(database)
    )
    yield* serveStdio({ defaultBackend: invocation.backend ?? defaultBackend() }).pipe(
      Effect.provide(Layer.mergeAll(clientLayer(invocation), idempotency, access))
    )
  }).pipe(Effect.provide(stderrLogger))).pipe(
    Command.withDescription("serve MCP on stdio (started by an MCP client; exits when it closes stdin)")
  )

const hasKvm = () => {
  try {
    NodeFs.accessSync("/dev/kvm", NodeFs.constants.R_OK | NodeFs.constants.W_OK)
    return true
  } catch {
    return false
  }
}

const runnerCommand = Command.make("runner", {
  advertise: Options.text("advertise").pipe(
    Options.withPseudoName("HOST:PORT"),
    Options.withDescription("the address other runners and clients reach this runner at (it listens there)")
  ),
  listen: Options.text("listen").pipe(
    Options.withPseudoName("HOST:PORT"),
    Options.optional,
    Options.withDescription("listen here instead of the advertised address (behind NAT)")
  ),
  labels: Options.text("labels").pipe(
    Options.withPseudoName("K=V,…"),
    Options.withDefault(""),
    Options.withDescription("labels placement constraints match; backend, arch and kvm are set for you")
  ),
  capacity: Options.text("capacity").pipe(
    Options.withPseudoName("memory=MiB,cpus=N,workspaces=N"),
    Options.withDefault(""),
    Options.withDescription(
      "what this runner may hold (default: host memory less 1 GiB, 4 vCPUs per core, no cap)"
    )
  ),
  runnerId: Options.text("runner-id").pipe(
    Options.optional,
    Options.withDescription(
      "this runner's id in the cluster, stable across restarts (default: HOSTNAME-PORT)"
    )
  ),
  lockExpiry: Options.integer("lock-expiry").pipe(
    Options.withPseudoName("SECONDS"),
    Options.withDefault(defaultLockExpiryMs / 1000),
    Options.withDescription(
      "a runner silent this long is lost: its workspaces read lost, restart: always ones move"
    )
  ),
  forgetAfter: Options.integer("forget-after").pipe(
    Options.withPseudoName("SECONDS"),
    Options.withDefault(defaultForgetAfterSeconds),
    Options.withDescription(
      "a runner silent this long that holds no workspace is dropped from the cluster's list (0: never)"
    )
  )
}, ({ advertise, capacity, forgetAfter, labels, listen, lockExpiry, runnerId }) =>
  Effect.gen(function*() {
    const invocation = yield* Invocation
    if (invocation.cluster === undefined) {
      return yield* new InvalidInput({
        message: "serve runner needs the cluster's PostgreSQL URL",
        remediation:
          "microagent --cluster postgres://USER@HOST/DB serve runner --advertise HOST:PORT (or set MICROAGENT_CLUSTER)"
      })
    }
    const address = yield* parseHostPort(advertise, "--advertise")
    const listenAddress = Option.isSome(listen) ? yield* parseHostPort(listen.value, "--listen") : undefined
    const declared = yield* parseCapacity(capacity)
    const extra = yield* parseLabels(labels, "--labels")
    const backend = invocation.backend ?? defaultBackend()
    const id = Option.getOrElse(runnerId, () => `${NodeOs.hostname().toLowerCase()}-${address.port}`)
    if (!/^[a-z0-9][a-z0-9.-]{0,62}$/.test(id)) {
      return yield* new InvalidInput({
        message: `runner id "${id}" must be lower-case letters, digits, dots and dashes`,
        remediation: "pass --runner-id"
      })
    }
    if (lockExpiry < 2 || lockExpiry > 3600) {
      return yield* new InvalidInput({
        message: "--lock-expiry must be between 2 and 3600 seconds",
        remediation: "the default, 30, suits most clusters; give every runner the same"
      })
    }
    if (forgetAfter !== 0 && forgetAfter < lockExpiry) {
      return yield* new InvalidInput({
        message: `--forget-after must be 0 (never) or at least the lock expiry (${lockExpiry} s)`,
        remediation: "the default, 86400, forgets a runner silent for a day; give every runner the same"
      })
    }
    const root = Home.resolveRoot(invocation.stateDir)
    const Runner = yield* Effect.promise(() => import("../cluster/Runner.ts"))
    const runner = Runner.layer({
      root,
      url: invocation.cluster,
      runnerId: id,
      advertise: address,
      listen: listenAddress,
      labels: { backend, arch: process.arch, kvm: hasKvm() ? "yes" : "no", ...extra },
      capacity: declared,
      lockExpiryMs: lockExpiry * 1000,
      forgetAfterMs: forgetAfter * 1000
    })
    yield* Effect.scoped(Effect.gen(function*() {
      yield* Layer.build(runner)
      process.stderr.write(
        `microagent: runner ${id} joined the cluster at ${
          redact(invocation.cluster!)
        }, reachable at ${advertise}\n`
      )
      return yield* Effect.never
    }))
  }).pipe(Effect.provide(stderrLogger))).pipe(
    Command.withDescription("serve this host's workspaces to a cluster (with --cluster) until interrupted")
  )

export const serve = Command.make("serve", {}, () =>
  Effect.fail(
    new InvalidInput({
      message: "serve needs a subcommand: rpc, mcp or runner",
      remediation:
        "microagent serve rpc [--socket PATH], microagent serve mcp, or microagent --cluster URL serve runner"
    })
  )).pipe(
    Command.withDescription("serve the RPC API (rpc), an MCP server (mcp) or a cluster runner (runner)"),
    Command.withSubcommands([rpcCommand, mcpCommand, runnerCommand])
  )

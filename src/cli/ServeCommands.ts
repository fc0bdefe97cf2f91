/**
 * `serve`: the agent and application surfaces, both thin clients of the state directory's runtime
 * (started on demand), which runs the programs and holds the VMs. `serve rpc` puts a socket of the
 * caller's choosing in front of it; `serve mcp` is an MCP server on stdio, started by an MCP client.
 * `--backend` sets the backend of new workspaces.
 */
import { Command, Options } from "@effect/cli"
import { Effect, Layer, Logger } from "effect"
import * as NodePath from "node:path"
import { InvalidInput } from "../domain/Errors.ts"
import { defaultBackend } from "../layers/backends/Backends.ts"
import * as Database from "../layers/state/Database.ts"
import * as SqliteStateStore from "../layers/state/SqliteStateStore.ts"
import { HostAccess, hostRootsVariable, parseGrants } from "../mcp/HostAccess.ts"
import { Idempotency } from "../mcp/Idempotency.ts"
import { serveStdio } from "../mcp/Server.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { layerForwardingServer } from "../rpc/Server.ts"
import { Home } from "../services/Home.ts"
import { Invocation } from "./Invocation.ts"

/** Logs go to stderr: stdout is the protocol's (MCP) or the caller's. */
const stderrLogger = Logger.replace(Logger.defaultLogger, Logger.withConsoleError(Logger.logfmtLogger))

const rpcCommand = Command.make("rpc", {
  socket: Options.text("socket").pipe(
    Options.withPseudoName("PATH"),
    Options.withDescription("unix socket to listen on (made 0600, its directory 0700)")
  )
}, ({ socket }) =>
  Effect.gen(function*() {
    const invocation = yield* Invocation
    const path = NodePath.resolve(socket)
    const runtime = MicroagentClient.layerRuntime(Home.resolveRoot(invocation.stateDir))
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
      Effect.provide(Layer.mergeAll(MicroagentClient.layerRuntime(root), idempotency, access))
    )
  }).pipe(Effect.provide(stderrLogger))).pipe(
    Command.withDescription("serve MCP on stdio (started by an MCP client; exits when it closes stdin)")
  )

export const serve = Command.make("serve", {}, () =>
  Effect.fail(
    new InvalidInput({
      message: "serve needs a subcommand: rpc or mcp",
      remediation: "microagent serve rpc [--socket PATH], or microagent serve mcp"
    })
  )).pipe(
    Command.withDescription("serve the RPC API (rpc) or an MCP server (mcp)"),
    Command.withSubcommands([rpcCommand, mcpCommand])
  )

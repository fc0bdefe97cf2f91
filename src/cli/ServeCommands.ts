/**
 * `serve`: the agent and application surfaces. `serve rpc` serves the RPC API on a unix socket;
 * `serve mcp` is an MCP server on stdio, started by an MCP client. Both run the lifecycle programs in
 * this process, each workspace on its own backend; `--backend` sets the backend of new workspaces.
 */
import { Command, Options } from "@effect/cli"
import { Effect, Layer, Logger } from "effect"
import * as NodePath from "node:path"
import { InvalidInput } from "../domain/Errors.ts"
import { defaultBackend } from "../layers/backends/Backends.ts"
import { WorkspaceBackends } from "../layers/backends/WorkspaceBackends.ts"
import { DatabaseLive } from "../layers/state/Database.ts"
import { SqliteStateStore } from "../layers/state/SqliteStateStore.ts"
import { Idempotency } from "../mcp/Idempotency.ts"
import { serveStdio } from "../mcp/Server.ts"
import { defaultSocketPath } from "../rpc/Client.ts"
import { layerInProcessClient, layerServer } from "../rpc/Server.ts"
import { Home } from "../services/Home.ts"
import { orUndefined } from "./Flags.ts"
import { Invocation } from "./Invocation.ts"

/** The state store of this invocation, and the backends (built on first use) of a long-lived server. */
const runtimeLayer = Effect.map(Invocation, (invocation) => {
  const home = Home.layer(Home.resolveRoot(invocation.stateDir))
  const store = SqliteStateStore.pipe(Layer.provideMerge(DatabaseLive), Layer.provideMerge(home))
  const backends = WorkspaceBackends.layer({ defaultBackend: invocation.backend ?? defaultBackend() })
  return Layer.provideMerge(backends, store)
})

/** Logs go to stderr: stdout is the protocol's (MCP) or the caller's. */
const stderrLogger = Logger.replace(Logger.defaultLogger, Logger.withConsoleError(Logger.logfmtLogger))

const rpcCommand = Command.make("rpc", {
  socket: Options.text("socket").pipe(
    Options.withDescription("unix socket to listen on (default: run/runtime.sock in the state directory)"),
    Options.optional
  )
}, ({ socket }) =>
  Effect.gen(function*() {
    const invocation = yield* Invocation
    const path = NodePath.resolve(orUndefined(socket) ?? defaultSocketPath(invocation.stateDir))
    const runtime = yield* runtimeLayer
    yield* Effect.scoped(Effect.gen(function*() {
      yield* Layer.build(layerServer({ socket: path }).pipe(Layer.provide(runtime)))
      process.stderr.write(`microagent: RPC API listening on ${path}\n`)
      return yield* Effect.never
    }))
  }).pipe(Effect.provide(stderrLogger))).pipe(
    Command.withDescription("serve the RPC API on a unix socket (0600) until interrupted")
  )

const mcpGuidance = `microagent serve mcp speaks the Model Context Protocol on stdin and stdout; an MCP client
starts it. Configure your client with, for example:

  {"mcpServers": {"microagent": {"command": "microagent", "args": ["serve", "mcp"]}}}

See docs/mcp.md for the tools.
`

const mcpCommand = Command.make("mcp", {}, () =>
  Effect.gen(function*() {
    if (process.stdin.isTTY) {
      process.stderr.write(mcpGuidance)
      return yield* new InvalidInput({
        message: "serve mcp talks to an MCP client over stdio, not to a terminal",
        remediation: "configure it as an MCP server in your client (see above)"
      })
    }
    const invocation = yield* Invocation
    const runtime = yield* runtimeLayer
    const services = Layer.mergeAll(layerInProcessClient, Idempotency.layer).pipe(Layer.provideMerge(runtime))
    yield* serveStdio({ defaultBackend: invocation.backend ?? defaultBackend() }).pipe(
      Effect.provide(services)
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

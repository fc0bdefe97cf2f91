/**
 * `microagent-mitm CONFIG_JSON`: a workspace's TLS interceptor under `--egress mitm` (MitmBridge.ts),
 * started detached by the host when the workspace starts. The credential swaps' values arrive on
 * stdin, never in argv or env; "ready" on stdout says the CA is minted and the socket listens.
 */
import { Either, Schema } from "effect"
import { MitmBridgeConfig, runMitmBridge } from "./MitmBridge.ts"
import { withStdinValues } from "./StdinValues.ts"

const config = Schema.decodeUnknownEither(Schema.parseJson(MitmBridgeConfig))(process.argv[2] ?? "")
if (Either.isLeft(config)) {
  process.stderr.write("usage: microagent-mitm CONFIG_JSON, swap values on stdin (started by microagent)\n")
  process.exit(2)
}
withStdinValues("microagent-mitm", (values) =>
  runMitmBridge(config.right, values).then(
    () => process.stdout.write("ready\n"),
    (error: unknown) => {
      process.stderr.write(`microagent-mitm: ${error instanceof Error ? error.message : String(error)}\n`)
      process.exit(1)
    }
  ))

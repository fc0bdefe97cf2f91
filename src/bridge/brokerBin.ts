/**
 * `microagent-broker CONFIG_JSON`: a workspace's credential broker (BrokerBridge.ts), started detached
 * by the host when the workspace starts. The secrets' values arrive on stdin, never in argv or env.
 */
import { Either, Schema } from "effect"
import { BrokerBridgeConfig, runBrokerBridge } from "./BrokerBridge.ts"
import { withStdinValues } from "./StdinValues.ts"

const config = Schema.decodeUnknownEither(Schema.parseJson(BrokerBridgeConfig))(process.argv[2] ?? "")
if (Either.isLeft(config)) {
  process.stderr.write("usage: microagent-broker CONFIG_JSON, secrets on stdin (started by microagent)\n")
  process.exit(2)
}
withStdinValues("microagent-broker", (values) => {
  // "ready" tells the host the values arrived and the channels are being served.
  runBrokerBridge(config.right, values)
  process.stdout.write("ready\n")
})

/**
 * `microagent-broker CONFIG_JSON`: a workspace's credential broker (BrokerBridge.ts), started detached
 * by the host when the workspace starts. The secrets' values arrive on stdin, never in argv or env.
 */
import { Either, Schema } from "effect"
import { BrokerBridgeConfig, BrokerSecrets, runBrokerBridge } from "./BrokerBridge.ts"

const config = Schema.decodeUnknownEither(Schema.parseJson(BrokerBridgeConfig))(process.argv[2] ?? "")
if (Either.isLeft(config)) {
  process.stderr.write("usage: microagent-broker CONFIG_JSON, secrets on stdin (started by microagent)\n")
  process.exit(2)
}
const chunks: Array<Buffer> = []
process.stdin.on("data", (chunk: Buffer) => chunks.push(chunk))
process.stdin.on("end", () => {
  const text = Buffer.concat(chunks).toString("utf8")
  chunks.length = 0
  const secrets = Schema.decodeUnknownEither(Schema.parseJson(BrokerSecrets))(text === "" ? "{}" : text)
  if (Either.isLeft(secrets)) {
    process.stderr.write("microagent-broker: the secrets on stdin are not valid\n")
    process.exit(2)
  }
  const values = new Map(
    Object.entries(secrets.right).map((
      [name, value]
    ) => [name, Buffer.from(value, "base64").toString("utf8")])
  )
  // "ready" tells the host the values arrived and the channels are being served.
  runBrokerBridge(config.right, values)
  process.stdout.write("ready\n")
})

/**
 * `microagent-model-bridge CONFIG_JSON`: a paired workspace's model bridge (ModelBridge.ts), started
 * detached by the host when the workspace starts.
 */
import { Either, Schema } from "effect"
import { BridgeConfig, runBridge } from "./ModelBridge.ts"

const config = Schema.decodeUnknownEither(Schema.parseJson(BridgeConfig))(process.argv[2] ?? "")
if (Either.isLeft(config)) {
  process.stderr.write("usage: microagent-model-bridge CONFIG_JSON (started by microagent)\n")
  process.exit(2)
}
runBridge(config.right)

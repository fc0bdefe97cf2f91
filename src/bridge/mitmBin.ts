/**
 * `microagent-mitm CONFIG_JSON`: a workspace's TLS interceptor under `--egress mitm` (MitmBridge.ts),
 * started detached by the host when the workspace starts. The credential swaps' values arrive on
 * stdin, never in argv or env; "ready" on stdout says the CA is minted and the socket listens.
 */
import { Either, Schema } from "effect"
import { MitmBridgeConfig, MitmSecrets, runMitmBridge } from "./MitmBridge.ts"

const config = Schema.decodeUnknownEither(Schema.parseJson(MitmBridgeConfig))(process.argv[2] ?? "")
if (Either.isLeft(config)) {
  process.stderr.write("usage: microagent-mitm CONFIG_JSON, swap values on stdin (started by microagent)\n")
  process.exit(2)
}
const chunks: Array<Buffer> = []
process.stdin.on("data", (chunk: Buffer) => chunks.push(chunk))
process.stdin.on("end", () => {
  const text = Buffer.concat(chunks).toString("utf8")
  chunks.length = 0
  const secrets = Schema.decodeUnknownEither(Schema.parseJson(MitmSecrets))(text === "" ? "{}" : text)
  if (Either.isLeft(secrets)) {
    process.stderr.write("microagent-mitm: the values on stdin are not valid\n")
    process.exit(2)
  }
  const values = new Map(
    Object.entries(secrets.right).map((
      [name, value]
    ) => [name, Buffer.from(value, "base64").toString("utf8")])
  )
  runMitmBridge(config.right, values).then(
    () => process.stdout.write("ready\n"),
    (error: unknown) => {
      process.stderr.write(`microagent-mitm: ${error instanceof Error ? error.message : String(error)}\n`)
      process.exit(1)
    }
  )
})

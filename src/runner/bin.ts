/**
 * `microagent-model-runner --model PATH --id NAME --port N [--host 127.0.0.1] [--ctx N]`: the embedded
 * runner's process (OpenAiServer.ts). It prints one line when it serves and exits on SIGTERM or SIGINT.
 */
import { serveModel } from "./OpenAiServer.ts"

const usage = "usage: microagent-model-runner --model PATH --id NAME --port N [--host ADDR] [--ctx N]"

const parse = (argv: ReadonlyArray<string>) => {
  const values = new Map<string, string>()
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i]!
    const value = argv[i + 1]
    if (!["--model", "--id", "--port", "--host", "--ctx"].includes(flag) || value === undefined) {
      return undefined
    }
    values.set(flag, value)
  }
  const port = Number(values.get("--port"))
  const contextSize = Number(values.get("--ctx") ?? "4096")
  const modelPath = values.get("--model")
  const modelId = values.get("--id")
  if (modelPath === undefined || modelId === undefined) return undefined
  if (!Number.isInteger(port) || port < 0 || port > 65535) return undefined
  if (!Number.isInteger(contextSize) || contextSize < 16) return undefined
  return { modelPath, modelId, port, contextSize, host: values.get("--host") ?? "127.0.0.1" }
}

const options = parse(process.argv.slice(2))
if (options === undefined) {
  process.stderr.write(`${usage}\n`)
  process.exit(2)
}
try {
  const server = await serveModel(options)
  const address = server.address()
  const port = typeof address === "object" && address !== null ? address.port : options.port
  process.stdout.write(`serving ${options.modelId} on http://${options.host}:${port}/v1\n`)
  const stop = () => server.close(() => process.exit(0))
  process.once("SIGTERM", stop)
  process.once("SIGINT", stop)
} catch (error) {
  process.stderr.write(`microagent-model-runner: ${error instanceof Error ? error.message : String(error)}\n`)
  process.exit(1)
}

/**
 * The embedded model runner: one GGUF model loaded with llama.cpp (the `node-llama-cpp` package, whose
 * prebuilt CPU binaries ship inside the npm package) and served on loopback with the OpenAI-compatible
 * endpoints agents use: `GET /v1/models`, `POST /v1/completions` and `POST /v1/chat/completions`, each
 * with `stream: true` as server-sent events. Requests are served one at a time on one context sequence
 * (the runner is meant for one workspace's agent, not a fleet).
 *
 * It runs as its own process (src/runner/bin.ts), started by `model serve` when no `llama-server` is
 * installed; nothing of microagent's state is touched here.
 */
import type { Token } from "node-llama-cpp"
import * as NodeHttp from "node:http"

export interface RunnerOptions {
  readonly modelPath: string
  /** The name `/v1/models` lists and responses carry. */
  readonly modelId: string
  readonly host: string
  readonly port: number
  readonly contextSize: number
}

interface Generated {
  readonly text: string
  readonly promptTokens: number
  readonly completionTokens: number
  readonly finishReason: "stop" | "length"
}

/** The largest request body accepted (a prompt is text; 4 MiB is plenty). */
const maxBody = 4 * 1024 * 1024
const defaultMaxTokens = 128

type Json = Record<string, unknown>

const readBody = (request: NodeHttp.IncomingMessage): Promise<Json> =>
  new Promise((resolve, reject) => {
    const chunks: Array<Buffer> = []
    let size = 0
    request.on("data", (chunk: Buffer) => {
      size += chunk.length
      if (size > maxBody) {
        reject(new Error("request body too large"))
        request.destroy()
        return
      }
      chunks.push(chunk)
    })
    request.on("end", () => {
      try {
        const value: unknown = JSON.parse(Buffer.concat(chunks).toString("utf8"))
        if (typeof value !== "object" || value === null || Array.isArray(value)) {
          reject(new Error("the body must be a JSON object"))
        } else resolve(value as Json)
      } catch {
        reject(new Error("the body is not JSON"))
      }
    })
    request.on("error", reject)
  })

const sendJson = (response: NodeHttp.ServerResponse, status: number, body: unknown) => {
  const text = JSON.stringify(body)
  response.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text)
  })
  response.end(text)
}

const invalid = (response: NodeHttp.ServerResponse, message: string) =>
  sendJson(response, 400, { error: { message, type: "invalid_request_error" } })

const positiveInt = (value: unknown, fallback: number, max: number): number | undefined =>
  value === undefined || value === null
    ? fallback
    : typeof value === "number" && Number.isInteger(value) && value > 0
    ? Math.min(value, max)
    : undefined

const temperatureOf = (value: unknown): number | undefined =>
  value === undefined || value === null
    ? 0.8
    : typeof value === "number" && value >= 0 && value <= 2
    ? value
    : undefined

/** Chat messages as `{role, content}` with string content (text parts joined). */
const messagesOf = (value: unknown): Array<{ role: string; content: string }> | undefined => {
  if (!Array.isArray(value) || value.length === 0) return undefined
  const out: Array<{ role: string; content: string }> = []
  for (const item of value as Array<unknown>) {
    if (typeof item !== "object" || item === null) return undefined
    const { role, content } = item as { role?: unknown; content?: unknown }
    if (typeof role !== "string") return undefined
    const text = typeof content === "string"
      ? content
      : Array.isArray(content)
      ? content.map((part) => (part as { text?: unknown }).text).filter((t) => typeof t === "string").join("")
      : undefined
    if (text === undefined) return undefined
    out.push({ role, content: text })
  }
  return out
}

export const serveModel = async (options: RunnerOptions): Promise<NodeHttp.Server> => {
  const { getLlama, resolveChatWrapper } = await import("node-llama-cpp")
  const llama = await getLlama({ gpu: false, build: "never" })
  const model = await llama.loadModel({ modelPath: options.modelPath })
  const context = await model.createContext({
    contextSize: Math.min(options.contextSize, model.trainContextSize)
  })
  const sequence = context.getSequence()
  const chatWrapper = resolveChatWrapper(model)
  const created = Math.floor(Date.now() / 1000)
  let queue: Promise<unknown> = Promise.resolve()
  /** Runs one generation at a time on the one sequence. */
  const serial = <A>(task: () => Promise<A>): Promise<A> => {
    const next = queue.then(task, task)
    queue = next.catch(() => undefined)
    return next
  }

  const generate = (
    tokens: ReadonlyArray<Token>,
    maxTokens: number,
    temperature: number,
    onText: (text: string) => void
  ): Promise<Generated> =>
    serial(async () => {
      await sequence.clearHistory()
      const bos = model.tokens.bos
      const input = tokens.length > 0 || bos === null ? [...tokens] : [bos]
      const budget = Math.max(1, Math.min(maxTokens, context.contextSize - input.length - 1))
      const out: Array<Token> = []
      let finishReason: Generated["finishReason"] = "length"
      let sent = 0
      for await (const token of sequence.evaluate(input, { temperature })) {
        if (token === model.tokens.eos) {
          finishReason = "stop"
          break
        }
        out.push(token)
        const text = model.detokenize(out)
        // A character split across tokens waits for its last byte.
        if (text.length > sent && !text.endsWith("\uFFFD")) {
          onText(text.slice(sent))
          sent = text.length
        }
        if (out.length >= budget) break
      }
      const text = model.detokenize(out)
      if (text.length > sent) onText(text.slice(sent))
      return {
        text,
        promptTokens: input.length,
        completionTokens: out.length,
        finishReason
      }
    })

  const respond = async (
    response: NodeHttp.ServerResponse,
    body: Json,
    kind: "completion" | "chat",
    tokens: ReadonlyArray<Token>
  ) => {
    const maxTokens = positiveInt(body.max_tokens ?? body.max_completion_tokens, defaultMaxTokens, 4096)
    const temperature = temperatureOf(body.temperature)
    if (maxTokens === undefined) return invalid(response, "max_tokens must be a positive integer")
    if (temperature === undefined) return invalid(response, "temperature must be a number from 0 to 2")
    const id = `${kind === "chat" ? "chatcmpl" : "cmpl"}-${Date.now().toString(36)}`
    const object = kind === "chat" ? "chat.completion" : "text_completion"
    const stamp = Math.floor(Date.now() / 1000)
    const choiceOf = (text: string, finish: string | null, streaming: boolean) =>
      kind === "chat"
        ? {
          index: 0,
          ...(streaming ? { delta: text === "" ? {} : { content: text } } : {
            message: { role: "assistant", content: text }
          }),
          finish_reason: finish
        }
        : { index: 0, text, finish_reason: finish }
    if (body.stream === true) {
      response.writeHead(200, {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        connection: "keep-alive"
      })
      const event = (data: unknown) => response.write(`data: ${JSON.stringify(data)}\n\n`)
      const chunkObject = kind === "chat" ? "chat.completion.chunk" : "text_completion"
      if (kind === "chat") {
        event({
          id,
          object: chunkObject,
          created: stamp,
          model: options.modelId,
          choices: [{ index: 0, delta: { role: "assistant" }, finish_reason: null }]
        })
      }
      const result = await generate(tokens, maxTokens, temperature, (text) =>
        event({
          id,
          object: chunkObject,
          created: stamp,
          model: options.modelId,
          choices: [choiceOf(text, null, true)]
        }))
      event({
        id,
        object: chunkObject,
        created: stamp,
        model: options.modelId,
        choices: [choiceOf("", result.finishReason, true)]
      })
      response.end("data: [DONE]\n\n")
      return
    }
    const result = await generate(tokens, maxTokens, temperature, () => {})
    sendJson(response, 200, {
      id,
      object,
      created: stamp,
      model: options.modelId,
      choices: [choiceOf(result.text, result.finishReason, false)],
      usage: {
        prompt_tokens: result.promptTokens,
        completion_tokens: result.completionTokens,
        total_tokens: result.promptTokens + result.completionTokens
      }
    })
  }

  const handle = async (request: NodeHttp.IncomingMessage, response: NodeHttp.ServerResponse) => {
    const path = new URL(request.url ?? "/", "http://runner").pathname.replace(/\/+$/, "")
    if (request.method === "GET" && (path === "/v1/models" || path === "/models")) {
      return sendJson(response, 200, {
        object: "list",
        data: [{ id: options.modelId, object: "model", created, owned_by: "microagent" }]
      })
    }
    if (request.method === "GET" && path === "/health") return sendJson(response, 200, { status: "ok" })
    const completion = path === "/v1/completions" || path === "/completions"
    const chat = path === "/v1/chat/completions" || path === "/chat/completions"
    if (!completion && !chat) {
      return sendJson(response, 404, {
        error: { message: `no route ${path}`, type: "invalid_request_error" }
      })
    }
    if (request.method !== "POST") {
      return sendJson(response, 405, { error: { message: "use POST", type: "invalid_request_error" } })
    }
    const body = await readBody(request).catch((error: Error) => error)
    if (body instanceof Error) return invalid(response, body.message)
    if (completion) {
      const prompt = Array.isArray(body.prompt) ? body.prompt.join("") : body.prompt
      if (typeof prompt !== "string") return invalid(response, "prompt must be a string")
      return respond(response, body, "completion", model.tokenize(prompt))
    }
    const messages = messagesOf(body.messages)
    if (messages === undefined) return invalid(response, "messages must be a list of {role, content}")
    const history = messages.map((m) =>
      m.role === "assistant"
        ? { type: "model" as const, response: [m.content] }
        : m.role === "system"
        ? { type: "system" as const, text: m.content }
        : { type: "user" as const, text: m.content }
    )
    history.push({ type: "model", response: [] })
    const { contextText } = chatWrapper.generateContextState({ chatHistory: history })
    return respond(response, body, "chat", contextText.tokenize(model.tokenizer))
  }

  const server = NodeHttp.createServer((request, response) => {
    handle(request, response).catch((error: unknown) => {
      if (!response.headersSent) {
        sendJson(response, 500, { error: { message: String(error), type: "server_error" } })
      } else response.destroy()
    })
  })
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject)
    server.listen(options.port, options.host, () => resolve())
  })
  return server
}

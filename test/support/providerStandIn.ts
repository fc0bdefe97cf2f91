/**
 * A plain-HTTP stand-in for the three providers' APIs, for the `init` scaffold's tests: it answers
 * Anthropic's `POST /v1/messages`, OpenAI's `POST /v1/chat/completions` and Gemini's
 * `POST /v1beta/models/MODEL:generateContent` in their shapes, with a reply that quotes the user's text
 * (with a quote, a newline, UTF-8 text, and `<>` written as \u escapes the way some encoders do, to
 * exercise the agent's JSON handling). Every request is recorded.
 */
import * as NodeHttp from "node:http"
import type * as NodeNet from "node:net"

export interface StandInRequest {
  readonly method: string
  readonly url: string
  readonly headers: NodeHttp.IncomingHttpHeaders
  readonly body: unknown
}

export interface ProviderStandIn {
  readonly port: number
  readonly requests: Array<StandInRequest>
  readonly close: () => Promise<void>
}

/** The reply the stand-in gives to `text`, as the agent should print it. */
export const standInReply = (text: string) => `stand-in says "hi" <ok>\nyou asked: ${text} – é`

const userText = (body: any): string =>
  body?.messages?.filter((m: any) => m.role === "user").map((m: any) => m.content).join("")
    ?? body?.contents?.map((c: any) => c.parts.map((p: any) => p.text).join("")).join("")
    ?? ""

export const startProviderStandIn = (host = "127.0.0.1"): Promise<ProviderStandIn> =>
  new Promise((resolve, reject) => {
    const requests: Array<StandInRequest> = []
    const server = NodeHttp.createServer((request, response) => {
      const chunks: Array<Buffer> = []
      request.on("data", (chunk: Buffer) => chunks.push(chunk))
      request.on("end", () => {
        let body: unknown
        try {
          body = JSON.parse(Buffer.concat(chunks).toString("utf8"))
        } catch {
          body = Buffer.concat(chunks).toString("utf8")
        }
        requests.push({
          method: request.method ?? "",
          url: request.url ?? "",
          headers: request.headers,
          body
        })
        const reply = standInReply(userText(body).trim())
        const url = request.url ?? ""
        const answer = request.method !== "POST"
          ? undefined
          : url === "/v1/messages"
          ? { id: "msg_1", type: "message", role: "assistant", content: [{ type: "text", text: reply }] }
          : url === "/v1/chat/completions"
          ? { id: "chatcmpl-1", choices: [{ index: 0, message: { role: "assistant", content: reply } }] }
          : /^\/v1beta\/models\/[^/]+:generateContent$/.test(url)
          ? { candidates: [{ content: { role: "model", parts: [{ text: reply }] } }] }
          : undefined
        response.writeHead(answer === undefined ? 404 : 200, { "content-type": "application/json" })
        response.end(
          JSON.stringify(answer ?? { error: `no such endpoint ${url}` }).replace(/</g, "\\u003c").replace(
            />/g,
            "\\u003E"
          )
        )
      })
    })
    server.once("error", reject)
    server.listen(0, host, () =>
      resolve({
        port: (server.address() as NodeNet.AddressInfo).port,
        requests,
        close: () => new Promise((done) => server.close(() => done()))
      }))
  })

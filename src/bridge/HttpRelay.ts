/**
 * What the host-side HTTP relays (the credential broker, the TLS interceptor) share: the headers that
 * belong to one hop, passing an upstream's answer back, and answering an upstream that failed.
 */
import type * as NodeHttp from "node:http"
import { hopByHopHeaders } from "../domain/BrokerGrant.ts"

/** Headers that belong to one hop, not to the request or answer (RFC 9110 7.6.1). */
export const hopHeaders = hopByHopHeaders

/** The upstream's answer to the guest as it comes, without its hop-by-hop headers. */
export const relayAnswer = (answer: NodeHttp.IncomingMessage, response: NodeHttp.ServerResponse) => {
  const back: Record<string, string | Array<string>> = {}
  for (const [name, value] of Object.entries(answer.headers)) {
    if (value !== undefined && !hopHeaders.has(name)) back[name] = value
  }
  response.writeHead(answer.statusCode ?? 502, back)
  answer.pipe(response)
}

/** A 502 saying why, or a cut connection when the answer had begun. */
export const answerUpstreamFailure = (response: NodeHttp.ServerResponse, error: Error) => {
  if (response.headersSent) return response.destroy()
  response.writeHead(502, { "content-type": "application/json", connection: "close" })
  response.end(
    JSON.stringify({ error: { type: "upstream", message: `the upstream failed: ${error.message}` } })
  )
}

/**
 * Grant files of the broker's `assurance=semantic` endpoints, without a VM: what a grant file may hold,
 * which requests an operation describes (route, path parameters, query, headers, body), which answers
 * it lets through (status, type, size, JSON shape, no credential), where a redirect may go, and how
 * `--broker` takes a grant.
 */
import { Effect, Either } from "effect"
import { assert, describe, it } from "vitest"
import { checkBrokers, describeBroker, parseBroker } from "../../src/domain/Broker.ts"
import {
  authorize,
  type BrokerGrant,
  checkBody,
  checkResponse,
  decodeBrokerGrant,
  type GrantRequest,
  patternProblem,
  redirectTarget
} from "../../src/domain/BrokerGrant.ts"
import { SecretRef } from "../../src/domain/Workspace.ts"

const grantText = `
operations:
  - name: list-issues
    effect: read
    method: GET
    route: /repos/{owner}/{repo}/issues
    pathParameters: { owner: [acme] }
    query:
      - { name: state, values: [open, closed] }
      - { name: page, required: true, pattern: "[0-9]{1,3}" }
      - { name: next, allowURL: true }
      - { name: q }
    headers:
      - { name: Authorization, required: true, values: ["Bearer @secret:GH"] }
    response:
      statuses: [200]
      contentTypes: [application/json]
      maxBytes: 64
      json: { type: object, properties: { count: integer, title: string }, required: [count], additionalProperties: false }
  - name: open-issue
    effect: write
    method: POST
    route: /repos/{owner}/{repo}/issues
    body: { maxBytes: 40, contentTypes: [application/json], json: { type: object, properties: { title: string }, required: [title] } }
redirects: { allow: true, maxHops: 2, allowedOrigins: ["https://cdn.example"] }
`

const decoded = (text: string) => decodeBrokerGrant(text, "grant.yaml")
const grant: BrokerGrant = Either.getOrThrow(decoded(grantText))

const request = (over: Partial<GrantRequest>): GrantRequest => ({
  method: "GET",
  path: "/repos/acme/tools/issues",
  query: [["page", "2"]],
  headers: { authorization: "Bearer @secret:GH", "user-agent": undefined },
  hasBody: false,
  ...over
})

const ruleOf = (over: Partial<GrantRequest>) => {
  const decided = authorize(grant, request(over))
  return decided._tag === "Allowed" ? `allowed ${decided.operation.name}` : decided.denial.rule
}

describe("a grant file", () => {
  it("is decoded strictly, and what the schema cannot see is checked too", () => {
    assert.isTrue(Either.isRight(decoded(grantText)))
    const refused = (text: string, words: string) => {
      const result = decoded(text)
      assert.isTrue(Either.isLeft(result), text)
      if (Either.isLeft(result)) assert.include(result.left.message, words, result.left.message)
    }
    refused("operations: []", "grant.yaml")
    refused("operations: [{name: a, effect: read, method: GET, route: /x, extra: 1}]", "extra")
    refused("operations: [{name: a, effect: delete, method: GET, route: /x}]", "effect")
    refused("operations: [{name: a, effect: read, method: get, route: /x}]", "method")
    refused("operations: [{name: a, effect: read, method: GET, route: x}]", "route")
    refused("operations: [{name: a, effect: read, method: GET, route: '/x/{p}/{p}'}]", "appears twice")
    refused(
      "operations: [{name: a, effect: read, method: GET, route: /x, pathParameters: {p: [v]}}]",
      "not in its route"
    )
    refused(
      "operations: [{name: a, effect: read, method: GET, route: /x, query: [{name: q}, {name: q}]}]",
      "declared twice"
    )
    refused(
      "operations: [{name: a, effect: read, method: GET, route: /x, headers: [{name: Host}]}]",
      "the broker's to set"
    )
    refused(
      'operations: [{name: a, effect: read, method: GET, route: /x, query: [{name: q, pattern: "(?=a)"}]}]',
      "lookaround"
    )
    refused(
      "operations: [{name: a, effect: read, method: GET, route: /x}, {name: a, effect: read, method: GET, route: /y}]",
      "two operations are named a"
    )
    refused(
      "operations: [{name: a, effect: read, method: GET, route: /x}]\nredirects: {allow: true, allowedOrigins: [http://x]}",
      "not an https origin"
    )
    refused("operations: [{name: a", "not valid YAML or JSON")
    refused(
      `operations: [{name: a, effect: read, method: GET, route: /${"x".repeat(70 * 1024)}}]`,
      "at most 64 KiB"
    )
  })

  it("takes RE2's subset of regular expressions only", () => {
    assert.isUndefined(patternProblem("[a-z]+(-[a-z]+)*"))
    assert.include(patternProblem("(a)\\1") ?? "", "backreferences")
    assert.include(patternProblem("(?<!a)b") ?? "", "lookaround")
    assert.include(patternProblem("[") ?? "", "does not compile")
  })
})

describe("authorizing a request", () => {
  it("lets through what one operation describes, and names the rule that refused the rest", () => {
    assert.strictEqual(ruleOf({}), "allowed list-issues")
    assert.strictEqual(ruleOf({ query: [["page", "2"], ["state", "open"]] }), "allowed list-issues")
    assert.strictEqual(ruleOf({ path: "/repos/acme/tools/pulls" }), "no-operation")
    assert.strictEqual(ruleOf({ method: "DELETE" }), "no-operation")
    assert.strictEqual(ruleOf({ path: "/repos/other/tools/issues" }), "path-parameter")
    assert.strictEqual(ruleOf({ path: "/repos/acme/a%2Fb/issues" }), "path-parameter")
    assert.strictEqual(ruleOf({ path: "/repos/acme/../issues" }), "path-parameter")
    assert.strictEqual(ruleOf({ query: [] }), "query-missing")
    assert.strictEqual(ruleOf({ query: [["page", "2"], ["debug", "1"]] }), "query-undeclared")
    assert.strictEqual(ruleOf({ query: [["page", "2"], ["page", "3"]] }), "query-repeated")
    assert.strictEqual(ruleOf({ query: [["page", "2x"]] }), "query-value")
    assert.strictEqual(ruleOf({ query: [["page", "2"], ["state", "all"]] }), "query-value")
    // A URL in a query value only where the grant says so.
    assert.strictEqual(ruleOf({ query: [["page", "2"], ["q", "https://evil.example/x"]] }), "query-value")
    assert.strictEqual(
      ruleOf({ query: [["page", "2"], ["next", "https://api.example/p2"]] }),
      "allowed list-issues"
    )
    assert.strictEqual(ruleOf({ query: [["page", "2"], ["q", "x".repeat(5000)]] }), "query-value")
    assert.strictEqual(ruleOf({ headers: {} }), "header-missing")
    assert.strictEqual(ruleOf({ headers: { authorization: "Bearer stolen" } }), "header-value")
    assert.strictEqual(
      ruleOf({ headers: { authorization: "Bearer @secret:GH", "x-debug": "1" } }),
      "header-undeclared"
    )
    assert.strictEqual(ruleOf({ headers: { authorization: ["Bearer @secret:GH", "x"] } }), "header-repeated")
    // The connection's own headers are the broker's.
    assert.strictEqual(
      ruleOf({ headers: { authorization: "Bearer @secret:GH", host: "x", "accept-encoding": "gzip" } }),
      "allowed list-issues"
    )
    assert.strictEqual(ruleOf({ hasBody: true }), "body-unexpected")
    assert.strictEqual(
      ruleOf({
        method: "POST",
        hasBody: true,
        query: [],
        headers: { "content-type": "application/json; charset=utf-8" }
      }),
      "allowed open-issue"
    )
    assert.strictEqual(
      ruleOf({ method: "POST", hasBody: true, query: [], headers: { "content-type": "text/plain" } }),
      "body-type"
    )
  })

  it("checks a body whole: its size and its JSON shape", () => {
    const open = grant.operations[1]!
    assert.isUndefined(checkBody(open, Buffer.from('{"title":"bug"}')))
    assert.strictEqual(checkBody(open, Buffer.from(`{"title":"${"x".repeat(40)}"}`))?.rule, "body-too-large")
    assert.strictEqual(checkBody(open, Buffer.from('{"title":3}'))?.rule, "body-schema")
    assert.strictEqual(checkBody(open, Buffer.from("[1]"))?.rule, "body-schema")
    assert.strictEqual(checkBody(open, Buffer.from("{nope"))?.rule, "body-schema")
    assert.strictEqual(checkBody(grant.operations[0]!, Buffer.from("x"))?.rule, "body-unexpected")
  })
})

describe("checking an answer", () => {
  const list = grant.operations[0]!
  const answer = (body: string, status = 200, type = "application/json") => ({
    status,
    headers: { "content-type": type },
    body: Buffer.from(body)
  })
  it("lets through what the operation's response allows, and never a credential of the endpoint", () => {
    assert.isUndefined(checkResponse(list, answer('{"count":2,"title":"x"}'), ["s3cret"]))
    assert.strictEqual(checkResponse(list, answer('{"count":2}', 404), [])?.rule, "response-status")
    assert.strictEqual(
      checkResponse(list, answer('{"count":2}', 200, "text/html"), [])?.rule,
      "response-type"
    )
    assert.strictEqual(
      checkResponse(list, answer(`{"count":2,"title":"${"x".repeat(64)}"}`), [])?.rule,
      "response-too-large"
    )
    assert.strictEqual(checkResponse(list, answer('{"count":2.5}'), [])?.rule, "response-schema")
    assert.strictEqual(checkResponse(list, answer('{"title":"x"}'), [])?.rule, "response-schema")
    assert.strictEqual(checkResponse(list, answer('{"count":1,"extra":true}'), [])?.rule, "response-schema")
    assert.strictEqual(
      checkResponse(list, answer('{"count":1,"title":"s3cret"}'), ["s3cret"])?.rule,
      "credential-disclosure"
    )
    assert.strictEqual(
      checkResponse(list, {
        ...answer('{"count":1}'),
        headers: { "content-type": "application/json", "x-echo": "s3cret" }
      }, [
        "s3cret"
      ])?.rule,
      "credential-disclosure"
    )
    // Disclosure is refused even by an operation without a response rule.
    assert.strictEqual(
      checkResponse(grant.operations[1]!, answer("s3cret", 201, "text/plain"), ["s3cret"])?.rule,
      "credential-disclosure"
    )
  })

  it("follows a redirect only as the grant says: bodyless GET or HEAD, allowed origins, few hops", () => {
    const here = new URL("https://api.example/v1/x")
    const go = (location: string, over: { method?: string; hadBody?: boolean; hops?: number } = {}) =>
      redirectTarget(
        grant,
        { method: "GET", hadBody: false, hops: 0, ...over },
        "https://api.example",
        here,
        location
      )
    assert.strictEqual(Either.getOrThrow(go("/v1/y")).href, "https://api.example/v1/y")
    assert.strictEqual(Either.getOrThrow(go("https://cdn.example/blob")).origin, "https://cdn.example")
    const rule = (result: ReturnType<typeof go>) => (Either.isLeft(result) ? result.left.rule : "followed")
    assert.strictEqual(rule(go("https://evil.example/")), "redirect-denied")
    assert.strictEqual(rule(go("http://api.example/v1/y")), "redirect-denied")
    assert.strictEqual(rule(go("/v1/y", { method: "POST" })), "redirect-denied")
    assert.strictEqual(rule(go("/v1/y", { hadBody: true })), "redirect-denied")
    assert.strictEqual(rule(go("/v1/y", { hops: 2 })), "redirect-denied")
    const none = Either.getOrThrow(decoded("operations: [{name: a, effect: read, method: GET, route: /x}]"))
    assert.isTrue(
      Either.isLeft(redirectTarget(none, { method: "GET", hadBody: false, hops: 0 }, "https://a", here, "/x"))
    )
  })
})

describe("--broker with assurance=semantic", () => {
  const files: Record<string, string> = { "/work/grant.yaml": grantText, "/work/empty.yaml": "{}" }
  const read = (path: string) => {
    const text = files[path]
    if (text === undefined) throw new Error(`ENOENT: no such file, open '${path}'`)
    return text
  }
  const parse = (text: string) => Effect.runSync(Effect.either(parseBroker(text, 0, "/work", read)))
  const problem = (text: string) => {
    const result = parse(text)
    return Either.isLeft(result) ? result.left.message : "parsed"
  }

  it("reads the grant into the endpoint, relative to the caller's directory", () => {
    const parsed = parse("upstream=https://api.example;secret=GH=env:GH;assurance=semantic;grant=grant.yaml")
    if (Either.isLeft(parsed)) return assert.fail(parsed.left.message)
    const { endpoint, secrets } = parsed.right
    assert.strictEqual(endpoint.assurance, "semantic")
    assert.strictEqual(endpoint.grantFile, "/work/grant.yaml")
    assert.deepStrictEqual(endpoint.grant?.operations.map((o) => o.name), ["list-issues", "open-issue"])
    assert.include(describeBroker(endpoint), "assurance=semantic;grant=/work/grant.yaml")
    assert.isTrue(
      Either.isRight(Effect.runSync(Effect.either(checkBrokers([endpoint], secrets as Array<SecretRef>))))
    )
    // A record claiming semantic without its grant (an RPC caller's) is refused by create's check.
    const bare = { ...endpoint, grant: undefined }
    const refused = Effect.runSync(
      Effect.either(checkBrokers([bare as typeof endpoint], secrets as Array<SecretRef>))
    )
    assert.isTrue(Either.isLeft(refused))
  })

  it("refuses what semantic assurance cannot be", () => {
    assert.include(problem("upstream=https://a;assurance=semantic"), "needs a grant file")
    assert.include(problem("upstream=https://a;assurance=semantic;grant=missing.yaml"), "missing.yaml")
    assert.include(problem("upstream=https://a;assurance=semantic;grant=empty.yaml"), "empty.yaml")
    assert.include(problem("upstream=http://a;assurance=semantic;grant=grant.yaml"), "https:// upstream only")
    assert.include(
      problem("upstream=https://a;assurance=semantic;grant=grant.yaml;proxy"),
      "no CONNECT tunnel"
    )
    assert.include(problem("upstream=https://a;grant=grant.yaml"), "goes with assurance=semantic")
    assert.include(
      problem("upstream=https://a;assurance=semantic;grant=grant.yaml;grant=grant.yaml"),
      "one grant file"
    )
    assert.strictEqual(problem("upstream=https://a;assurance=trusted-upstream"), "parsed")
  })
})

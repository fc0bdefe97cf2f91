import { Either } from "effect"
import { assert, describe, it } from "vitest"
import {
  evaluateModelPolicy,
  type ModelPolicy,
  parseModelPolicy,
  type RequestFacts,
  requestFacts
} from "../../src/domain/ModelPolicy.ts"

const policy = (text: unknown): ModelPolicy => {
  const parsed = parseModelPolicy(JSON.stringify(text))
  if (Either.isLeft(parsed)) assert.fail(parsed.left)
  return parsed.right
}

const facts = (over: Partial<RequestFacts> = {}): RequestFacts => ({
  method: "POST",
  path: "/v1/chat/completions",
  requestBytes: 100,
  textBytes: 20,
  messages: 2,
  maxTokens: 16,
  stream: false,
  tools: [],
  ...over
})

describe("model policies", () => {
  const chat = policy({
    schema_version: "microagent.model_policy.v1",
    default: "deny",
    rules: [
      { id: "no-admin", effect: "deny", match: { paths: ["/admin*"] } },
      { id: "list", effect: "allow", match: { methods: ["get"], paths: ["/v1/models"] } },
      {
        id: "chat",
        effect: "allow",
        match: { paths: ["/v1/*"], models: ["m"] },
        limits: {
          max_tokens: 32,
          max_messages: 4,
          max_text_bytes: 100,
          max_request_bytes: 1000,
          stream: false,
          allowed_tool_names: ["search"]
        }
      }
    ]
  })

  it("the first matching rule decides; an allow whose limits are exceeded denies; else the default", () => {
    assert.deepStrictEqual(evaluateModelPolicy(chat, facts({ method: "GET", path: "/v1/models" })), {
      decision: "allow",
      rule: "list",
      reason: "rule list allows it"
    })
    assert.strictEqual(evaluateModelPolicy(chat, facts({ model: "m" })).decision, "allow")
    const cases: Array<[Partial<RequestFacts>, RegExp]> = [
      [{ maxTokens: 33 }, /max_tokens 33 is over the limit 32/],
      [{ maxTokens: undefined }, /sets no max_tokens/],
      [{ messages: 5 }, /5 messages, over max_messages 4/],
      [{ textBytes: 101 }, /over max_text_bytes 100/],
      [{ requestBytes: 1001 }, /over max_request_bytes 1000/],
      [{ stream: true }, /streaming is not allowed/],
      [{ tools: ["search", "shell"] }, /tool shell is not allowed/]
    ]
    for (const [over, reason] of cases) {
      const decision = evaluateModelPolicy(chat, facts({ model: "m", ...over }))
      assert.strictEqual(decision.decision, "deny", JSON.stringify(over))
      assert.strictEqual(decision.rule, "chat")
      assert.match(decision.reason, reason)
    }
    // Another model matches no rule: the default.
    assert.deepStrictEqual(evaluateModelPolicy(chat, facts({ model: "other" })), {
      decision: "deny",
      reason: "no rule matched; the default is deny"
    })
    assert.strictEqual(evaluateModelPolicy(chat, facts({ path: "/admin/x", model: "m" })).rule, "no-admin")
  })

  it("refuses unknown fields, duplicate rule ids and wrong versions, naming where", () => {
    const problem = (text: unknown) => {
      const parsed = parseModelPolicy(JSON.stringify(text))
      assert.isTrue(Either.isLeft(parsed), JSON.stringify(text))
      return Either.isLeft(parsed) ? parsed.left : ""
    }
    assert.match(problem({ schema_version: "v0", default: "allow" }), /schema_version/)
    assert.match(
      problem({
        schema_version: "microagent.model_policy.v1",
        default: "allow",
        rules: [{ id: "a", effect: "allow", limits: { max_tokns: 3 } }]
      }),
      /rules\.0\.limits\.max_tokns: is unexpected/
    )
    assert.match(
      problem({
        schema_version: "microagent.model_policy.v1",
        default: "allow",
        rules: [{ id: "a", effect: "allow" }, { id: "a", effect: "deny" }]
      }),
      /rule id "a" is used twice/
    )
    assert.match(parseModelPolicy("{").pipe(Either.flip, Either.getOrElse(() => "")), /not JSON/)
  })

  it("measures OpenAI requests without keeping their text", () => {
    const body = new TextEncoder().encode(JSON.stringify({
      model: "m",
      messages: [{ role: "user", content: "héllo" }, {
        role: "user",
        content: [{ type: "text", text: "ab" }]
      }],
      max_completion_tokens: 7,
      stream: true,
      tools: [{ type: "function", function: { name: "search" } }]
    }))
    const measured = requestFacts("post", "/v1/chat/completions?x=1", body, { workspaceId: "w" })
    assert.deepStrictEqual(measured, {
      method: "POST",
      path: "/v1/chat/completions",
      model: "m",
      workspaceId: "w",
      requestBytes: body.length,
      textBytes: 6 + 2,
      messages: 2,
      maxTokens: 7,
      stream: true,
      tools: ["search"]
    })
    const prompt = requestFacts("POST", "/v1/completions", new TextEncoder().encode('{"prompt":["ab","c"]}'))
    assert.strictEqual(prompt.textBytes, 3)
    assert.strictEqual(requestFacts("POST", "/v1/x", new TextEncoder().encode("not json")).messages, 0)
  })
})

/**
 * The credential broker's endpoint grammar and its rules, without a VM: what `--broker` accepts and
 * refuses, the guest environment it gives, how references are swapped, and what `create` checks.
 */
import { Effect, Either } from "effect"
import { assert, describe, it } from "vitest"
import {
  brokerEnv,
  checkBrokers,
  connectAllowed,
  describeBroker,
  guestSecrets,
  parseBroker,
  parseBrokers,
  specBrokerTexts,
  swapReferences
} from "../../src/domain/Broker.ts"
import { insideReason } from "../../src/domain/Inside.ts"
import { decodeSpec } from "../../src/domain/Spec.ts"
import { SecretRef } from "../../src/domain/Workspace.ts"

const parse = (text: string, index = 0) => Effect.runSync(Effect.either(parseBroker(text, index, "/work")))
const problem = (text: string) => {
  const result = parse(text)
  assert.isTrue(Either.isLeft(result), text)
  return Either.isLeft(result) ? result.left.message : ""
}

describe("the broker's CONNECT proxy", () => {
  it("is one endpoint at most, whose URL the guest's proxy variables name (the endpoints stay direct)", () => {
    const parsed = parse("upstream=https://a.example;proxy", 1)
    if (Either.isLeft(parsed)) return assert.fail(parsed.left.message)
    const { endpoint } = parsed.right
    assert.isTrue(endpoint.proxy)
    assert.notProperty(brokerEnv([endpoint]), "HTTP_PROXY")
    assert.deepInclude(brokerEnv([endpoint]), {
      HTTPS_PROXY: "http://127.0.0.1:18889",
      https_proxy: "http://127.0.0.1:18889",
      NO_PROXY: "127.0.0.1,localhost"
    })
    assert.strictEqual(describeBroker(endpoint), "upstream=https://a.example;proxy")
    const two = Effect.runSync(
      Effect.either(parseBrokers(["upstream=https://a;proxy", "upstream=https://b;proxy"], "/"))
    )
    assert.isTrue(
      Either.isLeft(two) && two.left.message.includes("only one broker endpoint may be the proxy")
    )
  })

  it("tunnels only to its connect-allow list when it has one: names, suffixes, CIDRs, ports", () => {
    const parsed = parse(
      "upstream=https://a.example;proxy;connect-allow=API.example.com:443,.pypi.org;connect-allow=198.51.100.0/24"
    )
    if (Either.isLeft(parsed)) return assert.fail(parsed.left.message)
    const { endpoint } = parsed.right
    assert.deepStrictEqual(endpoint.connectAllow, ["api.example.com:443", ".pypi.org", "198.51.100.0/24"])
    assert.strictEqual(
      describeBroker(endpoint),
      "upstream=https://a.example;proxy;connect-allow=api.example.com:443,.pypi.org,198.51.100.0/24"
    )
    const allowed = (host: string, address: string, port: number) =>
      connectAllowed(endpoint.connectAllow, { host, address, port })
    assert.isTrue(allowed("api.example.com", "203.0.113.5", 443))
    assert.isFalse(allowed("api.example.com", "203.0.113.5", 8443), "another port")
    assert.isTrue(allowed("files.pypi.org", "151.101.0.223", 443))
    assert.isTrue(allowed("pypi.org", "151.101.0.223", 80))
    assert.isFalse(allowed("evilpypi.org", "151.101.0.223", 443))
    // An address entry matches the address dialled, whatever name led there.
    assert.isTrue(allowed("anything.test", "198.51.100.77", 22))
    assert.isFalse(allowed("198.51.101.1", "198.51.101.1", 443))
    // No list: any (public) destination.
    assert.isTrue(connectAllowed([], { host: "x.test", address: "203.0.113.9", port: 1 }))
    assert.include(problem("upstream=https://a;connect-allow=x.test"), "goes with proxy")
    assert.include(problem("upstream=https://a;proxy;connect-allow=1.2.3.4/40"), "prefix over /32")
    assert.include(problem("upstream=https://a;proxy;connect-allow=a b"), "is not host")
    assert.include(problem("upstream=https://a;proxy;connect-allow="), "needs a value")
  })

  it("dials only outside addresses: the inside is the mediator's, the host's own addresses included", () => {
    const own = ["192.0.2.7"]
    assert.isUndefined(insideReason("198.51.100.10", own))
    assert.isUndefined(insideReason("8.8.8.8", own))
    assert.strictEqual(insideReason("192.0.2.7", own), "host")
    assert.strictEqual(insideReason("127.0.0.1", own), "loopback")
    assert.strictEqual(insideReason("10.0.2.2", own), "private")
    assert.strictEqual(insideReason("172.31.255.255", own), "private")
    assert.isUndefined(insideReason("172.32.0.1", own))
    assert.strictEqual(insideReason("169.254.169.254", own), "link-local")
    assert.strictEqual(insideReason("100.127.0.1", own), "cgnat")
    assert.strictEqual(insideReason("0.1.2.3", own), "this-network")
    assert.strictEqual(insideReason("239.1.1.1", own), "multicast-or-reserved")
    assert.strictEqual(insideReason("255.255.255.255", own), "multicast-or-reserved")
    assert.strictEqual(insideReason("::1", own), "not-ipv4")
  })
})

describe("credential broker endpoints", () => {
  it("parse the original's grammar into an endpoint and broker-held references", () => {
    const parsed = parse(
      " upstream=https://api.example.com/base/ ; secret=KEY=env:API_KEY;secret=T=file:tok;"
        + "base-url-env=API_URL;base-url-env=OTHER=/v1;ca=certs/ca.pem;capture;assurance=trusted-upstream",
      2
    )
    assert.isTrue(Either.isRight(parsed))
    if (Either.isLeft(parsed)) return
    const { endpoint, secrets } = parsed.right
    assert.strictEqual(endpoint.upstream, "https://api.example.com/base")
    assert.deepStrictEqual(endpoint.secrets, ["KEY", "T"])
    assert.strictEqual(endpoint.guestPort, 18890)
    assert.strictEqual(endpoint.ca, "/work/certs/ca.pem")
    assert.isTrue(endpoint.capture)
    assert.deepStrictEqual(secrets.map((s) => [s.name, s.source, s.use]), [
      ["KEY", "env:API_KEY", "broker"],
      ["T", "file:/work/tok", "broker"]
    ])
    assert.deepStrictEqual(brokerEnv([endpoint]), {
      MICROAGENT_BROKER_URL: "http://127.0.0.1:18890",
      API_URL: "http://127.0.0.1:18890",
      OTHER: "http://127.0.0.1:18890/v1"
    })
    assert.strictEqual(
      describeBroker(endpoint),
      "upstream=https://api.example.com/base;secret=KEY;secret=T;base-url-env=API_URL;"
        + "base-url-env=OTHER=/v1;ca=/work/certs/ca.pem;capture"
    )
  })

  it("refuse what is not an endpoint, naming what is wrong", () => {
    assert.include(problem("secret=A=env:B"), "needs upstream=URL")
    assert.include(problem("upstream=notaurl"), "is not a URL")
    assert.include(problem("upstream=file:///etc/passwd"), "only http:// and https://")
    assert.include(problem("upstream=https://u:p@h"), "holds no credentials")
    assert.include(problem("upstream=https://h/?q=1"), "query or fragment")
    assert.include(problem("upstream=https://a;upstream=https://b"), "one upstream")
    assert.include(problem("upstream=https://h;secret=1A=env:B"), "not a secret name")
    assert.include(problem("upstream=https://h;secret=A=vault:x"), "unknown source")
    assert.include(problem("upstream=https://h;secret=A=env:B;secret=A=env:C"), "given twice")
    assert.include(problem("upstream=https://h;base-url-env=1X"), "not a variable name")
    assert.include(problem("upstream=https://h;base-url-env=X=v1"), "not a path")
    assert.include(problem("upstream=https://h;capture=yes"), "takes no value")
    assert.include(problem("upstream=https://h;assurance=semantic"), "needs a grant file")
    assert.include(problem("upstream=https://h;assurance=strict"), 'unknown assurance "strict"')
    assert.include(problem("upstream=https://h;grant=g.yaml"), "reads no files")
    assert.include(problem("upstream=https://h;proxy=yes"), "takes no value")
    assert.include(problem("upstream=https://h;bogus=1"), 'unknown broker field "bogus"')
    assert.include(problem("upstream="), "needs a value")
  })

  it("number endpoints in order, at most eight, with names unique across them", () => {
    const many = Array.from({ length: 9 }, () => "upstream=https://h")
    const tooMany = Effect.runSync(Effect.either(parseBrokers(many, "/")))
    assert.isTrue(Either.isLeft(tooMany) && tooMany.left.message.includes("at most 8"))
    const shared = Effect.runSync(Effect.either(parseBrokers([
      "upstream=https://a;secret=K=env:A",
      "upstream=https://b;secret=K=env:B"
    ], "/")))
    assert.isTrue(Either.isLeft(shared) && shared.left.message.includes("declared by two endpoints"))
    const two = Effect.runSync(parseBrokers(["upstream=https://a;secret=K=env:A", "upstream=http://b"], "/"))
    assert.deepStrictEqual(two.endpoints.map((e) => e.guestPort), [18888, 18889])

    // What create checks of endpoints from any caller.
    const check = (secrets: ReadonlyArray<SecretRef>, endpoints = two.endpoints) =>
      Effect.runSync(Effect.either(checkBrokers(endpoints, secrets)))
    assert.isTrue(Either.isRight(check(two.secrets)))
    const missing = check([])
    assert.isTrue(Either.isLeft(missing) && missing.left.message.includes("not a broker-held secret"))
    const unused = check([...two.secrets, new SecretRef({ name: "X", source: "env:X", use: "broker" })])
    assert.isTrue(Either.isLeft(unused) && unused.left.message.includes("belongs to no endpoint"))
    const misnumbered = check(two.secrets, [two.endpoints[1]!, two.endpoints[0]!])
    assert.isTrue(Either.isLeft(misnumbered) && misnumbered.left.message.includes("must listen on 18888"))
    assert.deepStrictEqual(
      guestSecrets([...two.secrets, new SecretRef({ name: "G", source: "env:G" })]).map((s) => s.name),
      ["G"]
    )
  })

  it("swap held references, and report the ones the endpoint does not hold", () => {
    const values = new Map([["KEY", "v4lue"]])
    assert.deepStrictEqual(swapReferences("Bearer @secret:KEY", values), {
      text: "Bearer v4lue",
      refs: ["KEY"],
      unresolved: []
    })
    assert.deepStrictEqual(swapReferences("/x?k=@secret:KEY&o=@secret:OTHER", values), {
      text: "/x?k=v4lue&o=@secret:OTHER",
      refs: ["KEY", "OTHER"],
      unresolved: ["OTHER"]
    })
    assert.deepStrictEqual(swapReferences("no reference, @secret: alone", values), {
      text: "no reference, @secret: alone",
      refs: [],
      unresolved: []
    })
  })

  it("come from an Agentfile's agent.broker or agent.brokers, paths from the spec's directory", () => {
    const spec = Either.getOrThrow(decodeSpec(
      [
        "agent:",
        "  entry: ./agent.sh",
        "  brokers:",
        "    - upstream: https://api.example.com",
        "      secret: KEY=file:keys/api",
        "      env: [API_URL, OTHER=/v1]",
        "      ca: certs/ca.pem",
        "      capture: true",
        "    - upstream: http://127.0.0.1:9000",
        "      proxy: true",
        "      connectAllowlist: [.pypi.org, 198.51.100.0/24]",
        ""
      ].join("\n"),
      "Agentfile"
    ))
    const texts = Effect.runSync(specBrokerTexts(spec))
    const parsed = Effect.runSync(parseBrokers(texts, "/specs"))
    assert.deepStrictEqual(parsed.endpoints.map((e) => [e.upstream, e.guestPort, e.ca, e.capture]), [
      ["https://api.example.com", 18888, "/specs/certs/ca.pem", true],
      ["http://127.0.0.1:9000", 18889, undefined, false]
    ])
    assert.deepStrictEqual(parsed.secrets.map((s) => s.source), ["file:/specs/keys/api"])
    assert.deepStrictEqual(parsed.endpoints[1]!.connectAllow, [".pypi.org", "198.51.100.0/24"])
    assert.deepStrictEqual(parsed.endpoints[0]!.baseUrlEnv, [{ name: "API_URL", path: "" }, {
      name: "OTHER",
      path: "/v1"
    }])

    const both = decodeSpec("agent:\n  broker: {upstream: https://a}\n  brokers: []\n", "Agentfile")
    const conflict = Effect.runSync(Effect.either(specBrokerTexts(Either.getOrThrow(both))))
    assert.isTrue(Either.isLeft(conflict) && conflict.left.message.includes("both given"))
    const split = decodeSpec("agent:\n  broker: {upstream: https://a, ca: 'x;proxy'}\n", "Agentfile")
    const refused = Effect.runSync(Effect.either(specBrokerTexts(Either.getOrThrow(split))))
    assert.isTrue(Either.isLeft(refused) && refused.left.message.includes("holds ';'"))
    const unknown = decodeSpec("agent:\n  broker: {upstream: https://a, bogus: 1}\n", "Agentfile")
    assert.isTrue(Either.isLeft(unknown))
  })
})

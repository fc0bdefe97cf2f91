/** The receipt `dispatch` sums from an audit log. */
import { assert, describe, it } from "vitest"
import { receiptOf } from "../../src/domain/Egress.ts"

const record = (event: string, fields: Record<string, unknown> = {}) => ({
  ts: "2026-12-05T00:00:00Z",
  event,
  workspace: "w",
  ...fields
})

describe("receiptOf", () => {
  it("counts allowed and denied destinations by name, bytes, DNS, caps and signals", () => {
    const receipt = receiptOf("broker", [
      record("egress_mediator_start"),
      record("egress_dns_allow", { name: "example.com" }),
      record("egress_allow", { dst: "93.184.216.34:443", host: "example.com" }),
      record("egress_close", { dst: "93.184.216.34:443", bytes_out: 100, bytes_in: 2000 }),
      record("egress_allow", { dst: "93.184.216.34:443", host: "example.com" }),
      record("egress_internal_deny", { dst: "10.0.2.2:22", signal: "denied" }),
      record("egress_udp_deny", { dst: "8.8.8.8:53", signal: "foreign-resolver" }),
      record("egress_dns_deny", { name: "evil.test", signal: "denied" }),
      record("egress_cap_exceeded", { dst: "93.184.216.34:443" })
    ])
    assert.deepInclude(receipt, {
      mode: "broker",
      decisionCount: 9,
      dnsAllowed: 1,
      dnsDenied: 1,
      bytesOut: 100,
      bytesIn: 2000,
      capExceeded: 1
    })
    assert.deepStrictEqual(receipt.allowByHost, { "example.com": 2 })
    assert.deepStrictEqual(receipt.denyByHost, { "10.0.2.2:22": 1, "8.8.8.8:53": 1, "evil.test": 1 })
    assert.deepStrictEqual(receipt.signals, { denied: 2, "foreign-resolver": 1 })
  })

  it("counts the credential broker's requests with the flows, under the upstream's host", () => {
    const receipt = receiptOf("none", [
      record("broker_start"),
      record("broker_request_allow", { host: "api.example.com", bytes_out: 50, bytes_in: 700, status: 200 }),
      record("broker_request_deny", { host: "api.example.com", rule: "unresolved-secret-ref", status: 403 })
    ])
    assert.deepStrictEqual(receipt.allowByHost, { "api.example.com": 1 })
    assert.deepStrictEqual(receipt.denyByHost, { "api.example.com": 1 })
    assert.deepInclude(receipt, { decisionCount: 3, bytesOut: 50, bytesIn: 700 })
  })

  it("is empty for a run that reached nothing", () => {
    assert.deepInclude(receiptOf("none", []), { mode: "none", decisionCount: 0, bytesOut: 0 })
  })
})

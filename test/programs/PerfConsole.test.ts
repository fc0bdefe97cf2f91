import { assert, describe, it } from "@effect/vitest"
import { consoleUptimes } from "../../src/programs/Perf.ts"

describe("perf boot's reading of the guest console", () => {
  it("takes the guest's uptime from the agent's starting and ready lines", () => {
    const console = [
      "[    0.812345] Run /init as init process",
      "microagent-agent: starting at 0.81s uptime (microagent-agent 0.1.0)",
      "microagent-agent: ready at 1.07s uptime, serving virtio:microagent.agent"
    ].join("\n")
    assert.deepStrictEqual(consoleUptimes(console), { initMs: 810, readyMs: 1070 })
  })

  it("leaves out what the console does not say (an older agent, a boot that stopped early)", () => {
    assert.deepStrictEqual(consoleUptimes("microagent-agent: starting (microagent-agent 0.1.0)\n"), {})
    assert.deepStrictEqual(consoleUptimes("microagent-agent: starting at 2.5s uptime (x)\n"), {
      initMs: 2500
    })
    assert.deepStrictEqual(consoleUptimes(""), {})
  })
})

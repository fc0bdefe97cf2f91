/**
 * The pure parts of keeping workspaces up: the service's back-off, health checks from the spec, the
 * decisions of `supervise`, the systemd unit.
 */
import { Either } from "effect"
import { assert, describe, it } from "vitest"
import type { State } from "../../src/domain/State.ts"
import {
  healthCheckOf,
  nextServiceDelay,
  serviceCommandOf,
  superviseStep,
  supervisorUnit,
  supervisorUnitName
} from "../../src/domain/Supervision.ts"

describe("service back-off", () => {
  it("starts at 1 s, doubles to 30 s, and is back to 1 s after 30 s up", () => {
    const delays: Array<number> = []
    let delay: number | undefined
    for (let i = 0; i < 8; i++) {
      delay = nextServiceDelay(delay, 0)
      delays.push(delay)
    }
    assert.deepStrictEqual(delays, [1, 2, 4, 8, 16, 30, 30, 30])
    assert.strictEqual(nextServiceDelay(30, 29), 30)
    assert.strictEqual(nextServiceDelay(30, 30), 1)
    assert.strictEqual(nextServiceDelay(8, 120), 1)
  })

  it("quotes an argv service word by word", () => {
    assert.strictEqual(serviceCommandOf("./serve"), "./serve")
    assert.strictEqual(
      serviceCommandOf({ command: ["sh", "-c", "echo 'hi' $HOME"] }),
      `sh -c 'echo '\\''hi'\\'' $HOME'`
    )
  })
})

describe("health checks from the spec", () => {
  it("fills the reference's defaults", () => {
    const check = Either.getOrThrow(healthCheckOf({ exec: ["true"] }))
    assert.deepInclude(check, { intervalSeconds: 30, timeoutSeconds: 5, retries: 3, startPeriodSeconds: 0 })
    const http = Either.getOrThrow(healthCheckOf({ httpGet: "/healthz", port: 8080, retries: 1 }))
    assert.deepStrictEqual(http.httpGet, { path: "/healthz", port: 8080 })
    assert.strictEqual(http.retries, 1)
    assert.deepStrictEqual(
      Either.getOrThrow(healthCheckOf({ httpGet: { path: "/", port: 80 } })).httpGet,
      { path: "/", port: 80 }
    )
  })

  it("needs exactly one probe, and a port for httpGet", () => {
    assert.include(
      Either.getLeft(healthCheckOf({})).pipe((o) => o._tag === "Some" ? o.value : ""),
      "exactly one"
    )
    assert.include(
      Either.getLeft(healthCheckOf({ exec: ["true"], httpGet: "/", port: 1 })).pipe((o) =>
        o._tag === "Some" ? o.value : ""
      ),
      "exactly one"
    )
    assert.include(
      Either.getLeft(healthCheckOf({ httpGet: "/" })).pipe((o) => o._tag === "Some" ? o.value : ""),
      "health.port"
    )
    assert.include(
      Either.getLeft(healthCheckOf({ httpGet: "healthz", port: 1 })).pipe((o) =>
        o._tag === "Some" ? o.value : ""
      ),
      'start with "/"'
    )
  })
})

describe("supervise decisions", () => {
  const step = (
    state: State,
    policy: "never" | "on-failure" | "always",
    first = false,
    restarts = 0,
    max = 0
  ) => superviseStep({ state, policy, first, restarts, maxRestarts: max })._tag

  it("leaves a live workspace alone and starts a stopped one the first time, whatever the policy", () => {
    for (const state of ["starting", "running", "paused", "stopping"] as const) {
      assert.strictEqual(step(state, "always", true), "Wait")
    }
    for (const state of ["prepared", "halted", "stopped", "failed"] as const) {
      assert.strictEqual(step(state, "never", true), "Start")
    }
    assert.strictEqual(step("quarantined", "always", true), "Stop")
  })

  it("restarts per policy afterwards", () => {
    assert.strictEqual(step("failed", "never"), "Stop")
    assert.strictEqual(step("stopped", "never"), "Stop")
    assert.strictEqual(step("failed", "on-failure"), "Start")
    assert.strictEqual(step("stopped", "on-failure"), "Stop")
    assert.strictEqual(step("failed", "always"), "Start")
    assert.strictEqual(step("stopped", "always"), "Start")
    // Halted on purpose: supervision ends even under `always`.
    assert.strictEqual(step("halted", "always"), "Stop")
  })

  it("ends after --max-restarts restarts (0: no limit)", () => {
    assert.strictEqual(step("failed", "always", false, 1, 2), "Start")
    assert.strictEqual(step("failed", "always", false, 2, 2), "Stop")
    assert.strictEqual(step("failed", "always", false, 500, 0), "Start")
  })
})

describe("the systemd user unit", () => {
  it("has the reference's content", () => {
    assert.strictEqual(supervisorUnitName("web"), "microagent-supervise-web.service")
    assert.strictEqual(
      supervisorUnit({
        workspace: "web",
        command: ["/usr/bin/node", "/opt/ma/bin/microagent.mjs"],
        stateDir: "/home/u/.microagent"
      }),
      [
        "[Unit]",
        "Description=microagent supervise web",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=/usr/bin/node /opt/ma/bin/microagent.mjs supervise web --state-dir /home/u/.microagent",
        "Restart=on-failure",
        "",
        "[Install]",
        "WantedBy=default.target",
        ""
      ].join("\n")
    )
    assert.include(
      supervisorUnit({ workspace: "w", command: ["/a b/node"], stateDir: "/s" }),
      'ExecStart="/a b/node" supervise w'
    )
  })
})

import { assert, describe, it } from "@effect/vitest"
import { Either } from "effect"
import { decodeSpec } from "../../src/domain/Spec.ts"

const ok = (text: string) => Either.getOrThrow(decodeSpec(text, "microagent.yaml"))
const error = (text: string) => {
  const result = decodeSpec(text, "microagent.yaml")
  assert.isTrue(Either.isLeft(result), "expected a decoding error")
  const failure = Either.getOrThrow(Either.flip(result))
  assert.strictEqual(failure._tag, "InvalidInput")
  return failure.message
}

describe("microagent.yaml", () => {
  it("decodes a full spec", () => {
    const spec = ok(`
name: agent-1
image: alpine:3.20
profile: small
restart: on-failure
entrypoint: "python -m agent"
hostname: agent-one
env:
  MODE: test
  EMPTY: ""
resources:
  memoryMiB: 1024
  cpuCount: 2
  sizeMiB: 2048
  headroomMiB: 256
network:
  mode: isolated
`)
    assert.strictEqual(spec.name, "agent-1")
    assert.strictEqual(spec.image, "alpine:3.20")
    assert.deepStrictEqual(spec.env, { MODE: "test", EMPTY: "" })
    assert.deepStrictEqual(spec.resources, { memoryMiB: 1024, cpuCount: 2, sizeMiB: 2048, headroomMiB: 256 })
    assert.deepStrictEqual(spec.network, { mode: "isolated" })
  })

  it("decodes an empty file as an empty spec", () => {
    assert.deepStrictEqual(ok(""), {})
  })

  it("names an unknown top-level field", () => {
    assert.strictEqual(error("imagee: alpine\n"), `microagent.yaml: unknown top-level field "imagee"`)
  })

  it("says where a misplaced field belongs", () => {
    assert.strictEqual(
      error("resources:\n  mode: user\n"),
      `microagent.yaml: unknown field in resources "mode"; it belongs under network:`
    )
    assert.strictEqual(
      error("memoryMiB: 512\n"),
      `microagent.yaml: unknown top-level field "memoryMiB"; it belongs under resources:`
    )
    assert.strictEqual(
      error("resources:\n  network: {}\n"),
      `microagent.yaml: unknown field in resources "network"; it belongs at the top level`
    )
  })

  it("decodes network.forwards and refuses non-TCP or out-of-range ports", () => {
    const spec = ok(
      "network:\n  forwards:\n    - { hostPort: 8080, guestPort: 80 }\n    - { protocol: tcp, host: 0.0.0.0, hostPort: 2222, guestPort: 22 }\n"
    )
    assert.deepStrictEqual(spec.network?.forwards, [
      { hostPort: 8080, guestPort: 80 },
      { protocol: "tcp", host: "0.0.0.0", hostPort: 2222, guestPort: 22 }
    ])
    assert.include(
      error("network:\n  forwards:\n    - { protocol: udp, hostPort: 53, guestPort: 53 }\n"),
      "protocol"
    )
    assert.include(error("network:\n  forwards:\n    - { hostPort: 0, guestPort: 80 }\n"), "hostPort")
  })

  it("decodes disks, bundles and outputs, and refuses what they do not take", () => {
    const spec = ok(
      "disks:\n  - { name: data, path: ./data.ext4, mountpoint: /data, mode: ro }\n"
        + "bundles:\n  - { path: src.tar.gz, mountpoint: /src }\n"
        + "outputs:\n  - { name: report, path: /out/report.txt }\n"
    )
    assert.deepStrictEqual(spec.disks, [{
      name: "data",
      path: "./data.ext4",
      mountpoint: "/data",
      mode: "ro"
    }])
    assert.deepStrictEqual(spec.bundles, [{ path: "src.tar.gz", mountpoint: "/src" }])
    assert.deepStrictEqual(spec.outputs, [{ name: "report", path: "/out/report.txt" }])
    assert.include(error("disks:\n  - { path: a.ext4, mountpoint: /a, mode: rwx }\n"), "disks.0.mode")
    assert.include(error("disks:\n  - { path: a.ext4 }\n"), "mountpoint")
    assert.include(error("outputs:\n  - { name: r, path: /r, extra: 1 }\n"), "extra")
  })

  it("decodes files; a mode that is not octal text is refused", () => {
    const spec = ok(
      'files:\n  - { src: agent.py, dst: /app/agent.py, mode: "0755" }\n  - { src: b, dst: /b }\n'
    )
    assert.deepStrictEqual(spec.files, [{ src: "agent.py", dst: "/app/agent.py", mode: "0755" }, {
      src: "b",
      dst: "/b"
    }])
    assert.include(error('files:\n  - { src: a, dst: /a, mode: "rwx" }\n'), "octal")
    assert.include(error("files:\n  - { src: a }\n"), "dst")
  })

  it("refuses fields this version does not act on", () => {
    assert.strictEqual(
      error("model: org/repo:file.gguf\n"),
      "microagent.yaml: model is not supported by this version of microagent"
    )
    assert.strictEqual(
      error("network:\n  ipv6: fd00::5/64\n"),
      "microagent.yaml: network.ipv6 is not supported by this version of microagent"
    )
  })

  it("decodes the guest's own addressing under network", () => {
    assert.deepInclude(
      ok(
        "network:\n  ip: 10.77.0.20/24\n  gateway: 10.77.0.1\n  dns: [10.77.0.1]\n  routes: ['203.0.113.0/24 via 10.77.0.254']\n"
      )
        .network,
      {
        ip: "10.77.0.20/24",
        gateway: "10.77.0.1",
        dns: ["10.77.0.1"],
        routes: ["203.0.113.0/24 via 10.77.0.254"]
      }
    )
    assert.include(error("ip: 10.0.0.1/24\n"), "it belongs under network:")
  })

  it("decodes an Agentfile's agent block: entry, egress and allow; unknown agent fields are refused", () => {
    assert.deepStrictEqual(
      ok("agent:\n  entry: python3 /app/agent.py\n  egress: off\n  allow: [api.example.com]\n").agent,
      {
        entry: "python3 /app/agent.py",
        egress: "off",
        allow: ["api.example.com"]
      }
    )
    assert.include(error("agent:\n  egress: sideways\n"), "egress")
    assert.strictEqual(
      error("agent:\n  entrypoint: x\n"),
      'microagent.yaml: unknown field in agent "entrypoint"; it belongs at the top level'
    )
  })

  it("decodes service, shell and health; misplaced or malformed ones are refused", () => {
    assert.strictEqual(ok("service: ./serve --port 8080\n").service, "./serve --port 8080")
    assert.deepStrictEqual(ok("service:\n  command: [python3, -m, http.server]\n").service, {
      command: ["python3", "-m", "http.server"]
    })
    assert.strictEqual(ok("shell: /bin/bash\n").shell, "/bin/bash")
    assert.include(error("shell: bash\n"), "absolute guest path")
    assert.deepStrictEqual(
      ok("health:\n  exec: [test, -e, /tmp/ok]\n  intervalSeconds: 2\n  retries: 2\n").health,
      { exec: ["test", "-e", "/tmp/ok"], intervalSeconds: 2, retries: 2 }
    )
    assert.deepStrictEqual(ok("health:\n  httpGet: /healthz\n  port: 8080\n").health, {
      httpGet: "/healthz",
      port: 8080
    })
    assert.strictEqual(
      error("health:\n  exec: [true]\n  every: 3\n"),
      'microagent.yaml: unknown field in health "every"'
    )
    assert.include(error("health:\n  retries: 0\n  exec: [true]\n"), "health.retries")
    assert.strictEqual(
      error("service: ''\n").startsWith("microagent.yaml: service"),
      true
    )
  })

  it("reports wrong values with their path", () => {
    assert.strictEqual(
      error("resources:\n  memoryMiB: lots\n"),
      `microagent.yaml: resources.memoryMiB: Expected number, actual "lots"`
    )
    assert.strictEqual(
      error("profile: huge\n"),
      `microagent.yaml: profile: expected one of "tiny", "small", "medium", "large"; got "huge"`
    )
    assert.match(error("name: -bad\n"), /^microagent\.yaml: name: .*must start with a letter or digit/)
    assert.strictEqual(
      error("env:\n  1X: y\n"),
      `microagent.yaml: env: "1X" is not a valid environment variable name`
    )
    assert.strictEqual(error("env:\n  A: [1]\n"), `microagent.yaml: env.A: Expected string, actual [1]`)
    assert.strictEqual(
      error("network:\n  mode: bridged\n"),
      `microagent.yaml: network.mode: expected one of "user", "isolated"; got "bridged"`
    )
    assert.strictEqual(
      error("resources:\n  cpuCount: 0\n"),
      "microagent.yaml: resources.cpuCount: Expected a number between 1 and 256, actual 0"
    )
  })

  it("rejects malformed YAML, duplicate keys and non-mappings", () => {
    assert.match(error("name: [unclosed\n"), /^microagent\.yaml: not valid YAML/)
    assert.match(error("name: a\nname: b\n"), /^microagent\.yaml: not valid YAML/)
    assert.strictEqual(error("- a\n- b\n"), "microagent.yaml: the spec must be a mapping of fields")
  })
})

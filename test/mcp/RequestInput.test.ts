import { RpcClientError } from "@effect/rpc"
import { Schema } from "effect"
import { assert, describe, it } from "vitest"
import { ExecCommand, HaltRequest, RunRequest } from "../../src/domain/Requests.ts"
import { requestInput, snakeCase } from "../../src/mcp/Tool.ts"
import { isRpcClientError } from "../../src/rpc/Client.ts"

describe("requestInput", () => {
  it("names a request's fields in snake_case, with their own Schemas and the tool's descriptions", () => {
    assert.strictEqual(snakeCase("timeoutSeconds"), "timeout_seconds")
    assert.strictEqual(snakeCase("bootTimeoutSeconds"), "boot_timeout_seconds")
    assert.strictEqual(snakeCase("name"), "name")
    const input = requestInput(HaltRequest.fields, { timeoutSeconds: "seconds", reason: "why" })
    assert.deepStrictEqual(Object.keys(input.fields), ["timeout_seconds", "reason"])
    const decode = Schema.decodeUnknownEither(Schema.Struct(input.fields))
    assert.isTrue(decode({ timeout_seconds: 3 })._tag === "Right")
    // The request's own refinement: a timeout is positive.
    assert.isTrue(decode({ timeout_seconds: -1 })._tag === "Left")
  })

  it("takes a tool's arguments back to the request's names, leaving absent ones out", () => {
    const input = requestInput(ExecCommand.fields, { cwd: "cwd", stdoutLimit: "limit", user: "user" })
    assert.deepStrictEqual(input.from({ cwd: "/tmp", stdout_limit: 10, user: undefined }), {
      cwd: "/tmp",
      stdoutLimit: 10
    })
    const run = requestInput(RunRequest.fields, { bootTimeoutSeconds: "boot", keep: "keep" })
    assert.deepStrictEqual(run.from({ boot_timeout_seconds: 5 }), { bootTimeoutSeconds: 5 })
  })
})

describe("isRpcClientError", () => {
  it("knows a lost connection by its type, not by its tag", () => {
    assert.isTrue(
      isRpcClientError(new RpcClientError.RpcClientError({ reason: "Protocol", message: "gone" }))
    )
    assert.isFalse(isRpcClientError({ _tag: "RpcClientError", message: "look-alike" }))
    assert.isFalse(isRpcClientError(undefined))
    assert.isFalse(isRpcClientError("RpcClientError"))
  })
})

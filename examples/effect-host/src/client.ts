import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Effect, Stream } from "effect"
import { defaultImage, Home, MicroagentClient } from "microagent"

const program = Effect.gen(function*() {
  const client = yield* MicroagentClient
  yield* client.create({ image: defaultImage, name: "w1" }) // backend: the server's default, or `backend`
  yield* client.start({ name: "w1" })
  const result = yield* client.exec({ name: "w1", argv: ["sh", "-c", "echo hi; exit 3"] })
  console.log(result.exitCode, result.stdout.trim()) // 3 hi
  yield* client.execStream({ name: "w1", argv: ["sh", "-c", "for i in 1 2 3; do echo $i; done"] }).pipe(
    Stream.runForEach((out) =>
      Effect.sync(() =>
        out._tag === "Exit" ? console.log("exit", out.result.exitCode) : process.stdout.write(out.data)
      )
    )
  )
  yield* client.delete({ name: "w1", force: true })
}).pipe(
  Effect.catchTags({ Conflict: (e) => Effect.logError(e.message, e.remediation) })
)

program.pipe(
  Effect.provide(MicroagentClient.layerRuntime(Home.resolveRoot())), // or .layer({ socket: PATH })
  NodeRuntime.runMain
)

import { MicroagentError, Workspace } from "microagent/promise"

// The default host: state directory $MICROAGENT_HOME (else ~/.microagent), backend $MICROAGENT_BACKEND
// (else qemu). `await using` deletes the workspace when the block ends, however it ends.
await using ws = await Workspace.create({ image: "microagent.local/busybox:latest" })

const result = await ws.exec(["sh", "-c", "echo hello from $0; exit 3"])
console.log(`exit ${result.exitCode}: ${result.stdout.trim()}`) // a non-zero exit is a result

for await (const out of ws.stream(["sh", "-c", "for i in 1 2 3; do echo line $i; done"])) {
  if (out.type === "stdout") process.stdout.write(out.data)
  else if (out.type === "exit") console.log(`stream exit ${out.result.exitCode}`)
}

try {
  await ws.files.write("/root/task.txt", "summarise this\n")
  console.log(`read back: ${(await ws.files.readText("/root/task.txt")).trim()}`)
} catch (error) {
  // Every failure is a MicroagentError with the library's kind (`unsupported`: the backend cannot).
  if (!(error instanceof MicroagentError) || error.kind !== "unsupported") throw error
  console.log(`files: ${error.kind}: ${error.message}`)
}

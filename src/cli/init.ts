/**
 * `init NAME`: an agent scaffold on the host (no state directory, no VM).
 */
import { Args, Command, Options } from "@effect/cli"
import { Effect } from "effect"
import * as NodePath from "node:path"
import { init, type InitResult } from "../programs/Init.ts"
import { providers } from "../programs/internal/Scaffold.ts"
import { orUndefined } from "./Flags.ts"
import { emit } from "./Output.ts"

const describeInit = (r: InitResult) => {
  const shown = NodePath.relative(process.cwd(), r.directory) || "."
  return [
    `wrote ${shown}/ (${r.provider}): ${r.files.join(", ")}${
      r.overwritten.length > 0 ? ` (replaced ${r.overwritten.join(", ")})` : ""
    }`,
    "next:",
    `  microagent create --file ${shown}/microagent.yaml --secret ${r.apiKeyEnv}=env:${r.apiKeyEnv}`,
    `  microagent cp ${shown}/demo/input.txt ${r.name}:/workspace/input.txt`,
    `  microagent start ${r.name}`,
    `  microagent result --wait ${r.name}`
  ].join("\n")
}

export const initCommand = Command.make("init", {
  provider: Options.choice("provider", providers).pipe(
    Options.withDescription("the API the agent calls (default anthropic)"),
    Options.optional
  ),
  dir: Options.text("dir").pipe(
    Options.withPseudoName("DIR"),
    Options.withDescription("where the NAME directory goes (default: here)"),
    Options.optional
  ),
  force: Options.boolean("force").pipe(
    Options.withDescription("overwrite the scaffold's files if they exist")
  ),
  name: Args.text({ name: "name" }).pipe(Args.withDescription("the agent's (and its workspace's) name"))
}, (options) =>
  Effect.flatMap(
    init({
      name: options.name,
      provider: orUndefined(options.provider),
      dir: orUndefined(options.dir),
      force: options.force
    }),
    (result) => emit(result, describeInit)
  )).pipe(Command.withDescription("write an agent scaffold: spec, agent script, README, demo input"))

/**
 * Help a person can read, for every command and group of the tree: exit 0, no parser filler, no
 * escape sequences when piped, every flag the parser accepts (as @effect/cli's own help lists it),
 * examples that parse, and structured usage errors naming the flag or argument at fault.
 */
import { Args, CliConfig, Command, CommandDescriptor, HelpDoc, Options } from "@effect/cli"
import { Effect, Either, HashMap } from "effect"
import { spawnSync } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterEach, assert, beforeEach, describe, it } from "vitest"
import { parseArgv } from "../../src/cli/Argv.ts"
import { checkCommandLine } from "../../src/cli/CommandLine.ts"
import { type CommandSpec, describeCommand } from "../../src/cli/Describe.ts"
import { examples } from "../../src/cli/Examples.ts"
import { allCommands, commandHelp, groupHelp, visibleSubcommands } from "../../src/cli/Help.ts"
import { commandSpecs, main, subcommands, valueFlagsOf } from "../../src/cli/Main.ts"
import { verbs } from "../../src/cli/Verbs.ts"
import { binPath, cli } from "../support/cli.ts"

const stateDir = NodePath.join(NodeOs.tmpdir(), `microagent-help-never-created-${process.pid}`)
const esc = String.fromCharCode(27)

/** Runs the CLI's main in this process, capturing what it writes. */
const run = async (argv: ReadonlyArray<string>) => {
  let stdout = ""
  let stderr = ""
  const out = process.stdout.write.bind(process.stdout)
  const err = process.stderr.write.bind(process.stderr)
  process.stdout.write = ((chunk: string | Uint8Array) => {
    stdout += String(chunk)
    return true
  }) as typeof process.stdout.write
  process.stderr.write = ((chunk: string | Uint8Array) => {
    stderr += String(chunk)
    return true
  }) as typeof process.stderr.write
  try {
    const code = await Effect.runPromise(main(argv))
    return { code, stdout, stderr }
  } finally {
    process.stdout.write = out
    process.stderr.write = err
  }
}

let saved: Record<string, string | undefined>
beforeEach(() => {
  saved = { NO_COLOR: process.env.NO_COLOR, MICROAGENT_HOME: process.env.MICROAGENT_HOME }
  // In this process stdout may be anything: no colour, so that the output is the same everywhere.
  process.env.NO_COLOR = "1"
  process.env.MICROAGENT_HOME = stateDir
})
afterEach(() => {
  for (const [key, value] of Object.entries(saved)) {
    if (value === undefined) delete process.env[key]
    else process.env[key] = value
  }
})

/** The flags @effect/cli's own help lists for a descriptor: what its parser accepts. */
const parserFlags = (descriptor: CommandDescriptor.Command<unknown>): Array<string> => {
  const text = HelpDoc.toAnsiText(
    CommandDescriptor.getHelp(descriptor, CliConfig.make({ showBuiltIns: false }))
  ).replace(new RegExp(`${esc}\\[[0-9;]*m`, "g"), "")
  const options = text.split(/^OPTIONS$/m)[1]?.split(/^[A-Z]+$/m)[0] ?? ""
  return options.split("\n").filter((line) => /^\(?-/.test(line)).flatMap((line) =>
    [...line.matchAll(/(?<![\w-])(--?[a-zA-Z][\w-]*)/g)].map((m) => m[1]!)
  )
}

/** Every command path with its @effect/cli descriptor. */
const descriptors = (): Array<{ path: Array<string>; descriptor: CommandDescriptor.Command<unknown> }> => {
  const out: Array<{ path: Array<string>; descriptor: CommandDescriptor.Command<unknown> }> = []
  const walk = (path: Array<string>, descriptor: CommandDescriptor.Command<unknown>) => {
    out.push({ path, descriptor })
    const children = HashMap.toEntries(CommandDescriptor.getSubcommands(descriptor))
    // A leaf answers with itself.
    if (children.length === 1 && children[0]![0] === path.at(-1)) return
    for (const [name, child] of children) walk([...path, name], child as CommandDescriptor.Command<unknown>)
  }
  for (
    const command of subcommands as unknown as ReadonlyArray<Command.Command<string, never, never, unknown>>
  ) {
    const [name] = [...CommandDescriptor.getNames(command.descriptor)]
    walk([name!], command.descriptor as CommandDescriptor.Command<unknown>)
  }
  return out
}

const specAt = (path: ReadonlyArray<string>): CommandSpec | undefined =>
  allCommands(commandSpecs()).find((c) => c.path.join(" ") === path.join(" "))?.spec

/** Splits an example as a shell would (single quotes only). */
const words = (line: string): Array<string> =>
  [...line.matchAll(/'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2]!)

describe("--help of every command and group", () => {
  for (const { descriptor, path } of descriptors()) {
    it(`microagent ${path.join(" ")} --help`, async () => {
      const out = await run([...path, "--help"])
      assert.strictEqual(out.code, 0, out.stderr)
      assert.strictEqual(out.stderr, "")
      const help = out.stdout
      assert.match(help, /^Usage: microagent /)
      assert.notInclude(help, "A user-defined piece of text")
      assert.notInclude(help, "This setting is optional")
      assert.notInclude(help, "This option may be repeated")
      assert.notInclude(help, esc)
      for (const line of help.split("\n")) assert.isAtMost(line.length, 80, line)
      // Every flag the parser accepts, in every spelling, as @effect/cli itself lists them ...
      const listed = new Set([...help.matchAll(/(?<![\w-])(--?[a-zA-Z][\w-]*)/g)].map((m) => m[1]!))
      for (const flag of parserFlags(descriptor)) assert.isTrue(listed.has(flag), `${flag} is missing`)
      // ... and as the model help is rendered from has them.
      const spec = specAt(path)!
      for (const flag of spec.flags) {
        for (const spelling of [flag.name, ...flag.aliases]) assert.isTrue(listed.has(spelling), spelling)
      }
      if (spec.subcommands.length > 0) {
        // A group alone prints the same help, and exits 0.
        const alone = await run(path)
        assert.strictEqual(alone.code, 0)
        assert.strictEqual(alone.stdout, help)
        for (const child of visibleSubcommands(spec)) assert.include(help, `  ${child.names.join(", ")}`)
      }
    })
  }

  it("run --help fits one screen: at most 63 lines, flags grouped", async () => {
    const help = (await run(["run", "--help"])).stdout
    assert.isAtMost(help.trimEnd().split("\n").length, 63)
    for (
      const group of [
        "Workspace:",
        "Resources:",
        "Network:",
        "Storage and secrets:",
        "Command:",
        "Output:",
        "Examples:"
      ]
    ) {
      assert.include(help, `\n${group}\n`)
    }
    assert.match(help, /^ {2}-e, --env KEY=VALUE +set a guest environment variable \(repeatable\)$/m)
    assert.match(help, /^ {2}--memory MIB +guest memory in MiB \(default 512\)$/m)
  })

  it("help COMMAND and help GROUP SUBCOMMAND print what --help prints", async () => {
    assert.strictEqual((await run(["help", "run"])).stdout, (await run(["run", "--help"])).stdout)
    assert.strictEqual(
      (await run(["help", "image", "pull"])).stdout,
      (await run(["image", "pull", "--help"])).stdout
    )
  })

  it("help all lists every command and subcommand", async () => {
    const all = (await run(["help", "all"])).stdout
    for (const verb of verbs) assert.match(all, new RegExp(`^ {2}${verb.name} `, "m"))
    for (const spec of commandSpecs()) {
      for (const child of visibleSubcommands(spec)) {
        assert.match(all, new RegExp(`^ {2}${spec.name} ${child.spec.name} `, "m"))
      }
    }
  })

  it("the verb registry and the command tree name the same commands", () => {
    const tree = commandSpecs().map((spec) => spec.name).sort()
    const registry = verbs.map((v) => v.name).filter((name) => name !== "help" && name !== "version").sort()
    assert.deepStrictEqual(registry, tree)
  })

  it("every example parses, and each command and group has 2-4 of them", () => {
    for (const [path, lines] of Object.entries(examples)) {
      assert.isDefined(specAt(path.split(" ")), `examples for a command that does not exist: ${path}`)
      for (const line of lines) {
        const [program, ...argv] = words(line)
        assert.strictEqual(program, "microagent", line)
        const parsed = parseArgv(argv, valueFlagsOf)
        assert.isTrue(Either.isRight(parsed), `${line}: ${JSON.stringify(parsed)}`)
        if (Either.isRight(parsed) && parsed.right._tag === "Command") {
          const spec = specAt([parsed.right.verb])!
          const checked = checkCommandLine([parsed.right.verb], spec, parsed.right.args)
          assert.isTrue(Either.isRight(checked), `${line}: ${JSON.stringify(checked)}`)
          assert.strictEqual(Either.isRight(checked) && checked.right._tag, "Ok", line)
        }
      }
    }
    for (const spec of commandSpecs()) {
      const count = (examples[spec.name] ?? []).length
      assert.isTrue(
        count >= 2 && count <= 4,
        `${spec.name} has ${count} examples (add 2-4 to src/cli/Examples.ts)`
      )
    }
  })
})

describe("a command added to the tree", () => {
  // As another noun would be added: nothing but its Command.make.
  const backup = Command.make("backup", {
    to: Options.file("to").pipe(Options.withDescription("where the backup goes")),
    compress: Options.boolean("compress").pipe(Options.withAlias("z"), Options.withDescription("gzip it")),
    level: Options.integer("level").pipe(Options.withDefault(3)),
    label: Options.keyValueMap("label").pipe(Options.optional),
    only: Options.choice("only", ["db", "files"]).pipe(Options.repeated),
    allowSecret: Options.text("allow-secret").pipe(Options.withPseudoName("NAME"), Options.optional),
    name: Args.text({ name: "name" }).pipe(Args.withDescription("backup name"))
  }, () => Effect.void).pipe(Command.withDescription("copy the state directory aside"))
  const state = Command.make("state").pipe(
    Command.withDescription("check, back up and restore the state directory"),
    Command.withSubcommands([backup, Command.make("check", {}, () => Effect.void)])
  )
  const spec = describeCommand(state)

  it("has help listing every flag, with placeholders, defaults and repeatability", () => {
    const help = commandHelp(["state", "backup"], spec.subcommands[0]!, spec)
    assert.match(help, /^Usage: microagent state backup --to PATH \[flags\] NAME$/m)
    assert.match(help, /^ {2}-z, --compress +gzip it$/m)
    assert.match(help, /^ {2}--level N +\(no description\) \(default 3\)$/m)
    assert.match(help, /^ {2}--label KEY=VALUE /m)
    assert.match(help, /^ {2}--only db\|files +\(no description\) \(repeatable\)$/m)
    assert.match(help, /^ {2}--allow-secret NAME /m)
    assert.match(help, /^ {2}NAME +backup name$/m)
    const group = groupHelp(["state"], spec)
    assert.match(group, /^ {2}backup +copy the state directory aside$/m)
    assert.match(group, /^ {2}check/m)
  })

  it("is checked: its group alone asks for help, mistakes name the flag", () => {
    assert.deepStrictEqual(
      checkCommandLine(["state"], spec, []),
      Either.right({ _tag: "GroupHelp", path: ["state"], spec })
    )
    const bad = checkCommandLine(["state"], spec, ["backup", "--to", "x", "--level", "high", "n"])
    assert.isTrue(Either.isLeft(bad) && bad.left.message === `--level takes a whole number, not "high"`)
    const only = checkCommandLine(["state"], spec, [
      "backup",
      "--to",
      "x",
      "--only",
      "db",
      "--only",
      "logs",
      "n"
    ])
    assert.isTrue(Either.isLeft(only) && only.left.message.startsWith("--only takes one of db, files"))
    const fine = checkCommandLine(["state"], spec, [
      "backup",
      "-z",
      "--to",
      "x",
      "--only",
      "db",
      "--only",
      "files",
      "n"
    ])
    assert.deepStrictEqual(fine, Either.right({ _tag: "Ok" }))
    const missing = checkCommandLine(["state"], spec, ["backup", "n"])
    assert.isTrue(Either.isLeft(missing) && missing.left.message === "--to is required")
  })
})

describe("usage errors are structured (kind permanent, exit 2) and name what is wrong", () => {
  const cases: ReadonlyArray<readonly [ReadonlyArray<string>, RegExp, RegExp]> = [
    [["run", "--bogus", "x", "alpine"], /unknown flag --bogus/, /microagent run --help/],
    [["run", "--nmae", "x", "alpine"], /unknown flag --nmae/, /did you mean --name\?/],
    [
      ["wait", "--timeout", "abc", "w"],
      /invalid --timeout "abc": "abc" is not a number with a unit; write a duration such as 30s/,
      /microagent wait --help/
    ],
    [["run", "--memory", "--json"], /--memory needs a value \(MIB\)/, /usage: microagent run/],
    [["create", "--profile", "huge"], /--profile takes one of tiny, small, medium, large/, /--help/],
    [
      ["create", "--file", NodeOs.tmpdir()],
      /--file takes a file; .* is a directory/,
      /microagent create --help/
    ],
    [["inspect"], /missing argument NAME/, /usage: microagent inspect NAME/],
    [["wait", "a", "b"], /unexpected argument "b"/, /usage: microagent wait/],
    [["wait", "--timeout", "1", "--timeout", "2", "w"], /--timeout is given more than once/, /give it once/],
    [["serve", "rpc"], /--socket is required/, /--socket PATH/],
    [["delete", "-yx", "w"], /unknown flag -x/, /did you mean -y\?/],
    [["image", "foo"], /unknown command "foo" for `microagent image`/, /image commands: pull, import, list/],
    [["image", "pul"], /unknown command "pul"/, /did you mean `microagent image pull`\?/],
    [["help", "image", "pul"], /unknown command "pul"/, /did you mean `microagent image pull`\?/],
    [["ima"], /unknown command "ima"/, /did you mean `microagent image`\?/]
  ]
  for (const [argv, message, remediation] of cases) {
    it(`microagent ${argv.join(" ")}`, async () => {
      const out = await run([...argv, "--json"])
      assert.strictEqual(out.code, 2)
      assert.strictEqual(out.stdout, "")
      const { error } = JSON.parse(out.stderr) as {
        error: { kind: string; message: string; remediation: string }
      }
      assert.strictEqual(error.kind, "permanent")
      assert.match(error.message, message)
      assert.match(error.remediation, remediation)
    })
  }

  it("without --json, the same error as text", async () => {
    process.env.MICROAGENT_OUTPUT = "text"
    try {
      const out = await run(["wait", "--timeout", "abc", "w"])
      assert.strictEqual(out.code, 2)
      assert.strictEqual(
        out.stderr,
        `error: invalid --timeout "abc": "abc" is not a number with a unit; write a duration such as 30s, 5m, 1h30m or 500ms\n  \`microagent wait --help\` shows its flags and examples\n`
      )
    } finally {
      delete process.env.MICROAGENT_OUTPUT
    }
  })
})

describe("the shipped executable", () => {
  const noColor = { NO_COLOR: "" }

  it("prints help without escape sequences when piped, and touches no state", () => {
    for (
      const args of [["run", "--help"], ["image"], ["image", "pull", "--help"], ["help"], ["help", "all"]]
    ) {
      const out = cli(args, { stateDir, env: noColor })
      assert.strictEqual(out.code, 0, out.stderr)
      assert.notInclude(out.stdout, esc, args.join(" "))
      assert.notInclude(out.stdout, "A user-defined piece of text")
    }
    const unknownFlag = cli(["run", "--bogus", "alpine", "--json"], { stateDir })
    assert.strictEqual(unknownFlag.code, 2)
    assert.strictEqual(
      JSON.parse(unknownFlag.stderr).error.message,
      "unknown flag --bogus for `microagent run`"
    )
    assert.isFalse(NodeFs.existsSync(stateDir))
  })

  it("on a terminal: its width, hanging indents, and bold headings unless NO_COLOR", () => {
    const script = (command: string, env: Record<string, string>) => {
      const result = spawnSync("script", ["-qec", command, "/dev/null"], {
        env: { ...process.env, MICROAGENT_HOME: stateDir, NO_COLOR: "", ...env },
        encoding: "utf8"
      })
      assert.isNull(result.error ?? null, "script(1) is needed: apt-get install bsdutils")
      return result.stdout.replace(/\r/g, "")
    }
    // create's help has descriptions longer than 80 columns allow (run's fits 80 on one screen).
    const wide = script(`stty cols 120; ${process.execPath} ${binPath} create --help`, {})
    assert.include(wide, `${esc}[1mUsage:`)
    const lines = wide.split("\n")
    assert.isTrue(lines.some((line) => line.replace(new RegExp(`${esc}\\[[0-9;]*m`, "g"), "").length > 80))
    const narrow = script(`stty cols 60; ${process.execPath} ${binPath} run --help`, { NO_COLOR: "1" })
    assert.notInclude(narrow, esc)
    for (const line of narrow.split("\n")) {
      if (!line.startsWith("  microagent ")) assert.isAtMost(line.length, 60, line)
    }
    // A description that wraps continues under its own column.
    const secret = narrow.split("\n").findIndex((line) => line.startsWith("  --secret"))
    const column = narrow.split("\n")[secret]!.indexOf("/run/secrets")
    assert.isAbove(column, 10)
    assert.strictEqual(narrow.split("\n")[secret + 1]!.search(/\S/), column)
  })
})

/**
 * `microagent completion bash|zsh|fish`: each script loads in its shell and completes commands,
 * subcommands, flags, flag values and the names in the store (workspaces, images, volumes, networks,
 * read through the list commands' `--quiet`), in the state directory the command line names. Runs the
 * built bundle on the fake backend; the shells must be installed (bash, zsh, fish).
 */
import { spawnSync } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { positionalKinds } from "../../src/cli/Completion.ts"
import { commandSpecs } from "../../src/cli/Main.ts"
import { binPath, cli, stopRuntime } from "../support/cli.ts"
import { requireTool } from "../support/kernel.ts"

let stateDir: string
let binDir: string
const scripts: Record<string, string> = {}

const shellEnv = () => ({ ...process.env, PATH: `${binDir}:${process.env.PATH}`, MICROAGENT_HOME: stateDir })

/** What bash's completion offers for `words`, the last one being the word under the cursor. */
const bash = (...words: ReadonlyArray<string>): ReadonlyArray<string> => {
  const run = spawnSync(
    "bash",
    [
      "-c",
      `source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); _microagent; printf '%s\\n' "\${COMPREPLY[@]}"`,
      "_",
      scripts.bash!,
      ...words
    ],
    { encoding: "utf8", env: shellEnv() }
  )
  assert.strictEqual(run.status, 0, run.stderr)
  return run.stdout.split("\n").filter((line) => line.length > 0)
}

/**
 * The same through zsh: bashcompinit calls the function in `emulate -L sh` with these options
 * (see zsh's Completion/bashcompinit), which this reproduces.
 */
const zsh = (...words: ReadonlyArray<string>): ReadonlyArray<string> => {
  const run = spawnSync(
    "zsh",
    [
      "-c",
      `source "$1"; shift; t() { emulate -L sh; setopt kshglob noshglob braceexpand; COMP_WORDS=("$@"); `
      + `COMP_CWORD=$(( $# - 1 )); _microagent; printf '%s\\n' "\${COMPREPLY[@]}"; }; t "$@"`,
      "_",
      scripts.zsh!,
      ...words
    ],
    { encoding: "utf8", env: shellEnv() }
  )
  assert.strictEqual(run.status, 0, run.stderr)
  return run.stdout.split("\n").filter((line) => line.length > 0)
}

/** What fish offers for the command line `line` (its `complete -C`), candidates without descriptions. */
const fish = (line: string): ReadonlyArray<string> => {
  const run = spawnSync("fish", ["-c", `source $argv[1]; complete -C $argv[2]`, scripts.fish!, line], {
    encoding: "utf8",
    env: shellEnv()
  })
  assert.strictEqual(run.status, 0, run.stderr)
  return run.stdout.split("\n").filter((l) => l.length > 0).map((l) => l.split("\t")[0]!)
}

beforeAll(() => {
  requireTool("bash", "bash")
  requireTool("zsh", "zsh")
  requireTool("fish", "fish")
  stateDir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-completion-"))
  binDir = NodePath.join(stateDir, "bin")
  NodeFs.mkdirSync(binDir)
  const launcher = NodePath.join(binDir, "microagent")
  NodeFs.writeFileSync(launcher, `#!/bin/sh\nexec "${process.execPath}" "${binPath}" "$@"\n`, { mode: 0o755 })
  for (const shell of ["bash", "zsh", "fish"]) {
    const out = cli(["completion", shell], { stateDir })
    assert.strictEqual(out.code, 0, out.stderr)
    scripts[shell] = NodePath.join(stateDir, `completion.${shell}`)
    NodeFs.writeFileSync(scripts[shell]!, out.stdout)
  }
  for (const name of ["alpha", "beta"]) {
    const made = cli(["--backend", "fake", "create", name], { stateDir })
    assert.strictEqual(made.code, 0, made.stderr)
  }
  const volume = cli(["volume", "create", "cache", "--size-mib", "16"], { stateDir })
  assert.strictEqual(volume.code, 0, volume.stderr)
}, 120_000)

afterAll(() => {
  stopRuntime(stateDir)
  NodeFs.rmSync(stateDir, { recursive: true, force: true })
})

describe("list --quiet", () => {
  it("prints only the names, one per line, in text and JSON modes alike", () => {
    for (const mode of [[], ["--json"]]) {
      const out = cli([...mode, "list", "--quiet"], { stateDir })
      assert.strictEqual(out.code, 0, out.stderr)
      assert.strictEqual(out.stdout, "alpha\nbeta\n")
    }
    assert.strictEqual(cli(["volume", "ls", "-q"], { stateDir }).stdout, "cache\n")
    assert.strictEqual(cli(["network", "ls", "-q"], { stateDir }).stdout, "")
  })
})

describe("completion scripts", () => {
  it("every command that takes positionals says what they name", () => {
    const missing = commandSpecs().flatMap((spec) =>
      [spec, ...spec.subcommands.map((sub) => ({ ...sub, name: `${spec.name} ${sub.name}` }))]
        .filter((entry) => entry.args.length > 0 && positionalKinds[entry.name] === undefined)
        .map((entry) => entry.name)
    )
    assert.deepStrictEqual(missing, [], "add these commands to positionalKinds in src/cli/Completion.ts")
  })

  it("a bad shell is a usage error", () => {
    const out = cli(["completion", "tcsh", "--json"], { stateDir })
    assert.strictEqual(out.code, 2)
  })

  it("bash completes verbs, subcommands, flags, values and the store's names", () => {
    assert.deepStrictEqual(bash("microagent", "sta"), ["start", "status", "state"])
    assert.includeMembers([...bash("microagent", "image", "")], ["pull", "list", "inspect", "prune"])
    assert.deepStrictEqual(bash("microagent", "run", "--profile", ""), ["tiny", "small", "medium", "large"])
    assert.deepStrictEqual(bash("microagent", "start", ""), ["alpha", "beta"])
    assert.deepStrictEqual(bash("microagent", "rm", "a"), ["alpha"])
    assert.deepStrictEqual(bash("microagent", "halt", "--timeout", "5", "b"), ["beta"])
    assert.deepStrictEqual(bash("microagent", "volume", "rm", ""), ["cache"])
    assert.includeMembers([...bash("microagent", "create", "--network", "")], ["user", "isolated"])
    assert.includeMembers([...bash("microagent", "run", "--pro")], ["--profile"])
    assert.includeMembers([...bash("microagent", "list", "-")], ["--quiet", "--json", "--state-dir"])
    assert.deepStrictEqual(bash("microagent", "help", "ru"), ["run", "runtime"])
    assert.deepStrictEqual(bash("microagent", "completion", ""), ["bash", "zsh", "fish"])
    // After the workspace, exec's words are the guest's: bash's own file completion takes over.
    assert.deepStrictEqual(bash("microagent", "exec", "alpha", "--", "l"), [])
    // Names come from the state directory the command line names.
    const elsewhere = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-completion-empty-"))
    try {
      assert.deepStrictEqual(bash("microagent", "--state-dir", elsewhere, "start", ""), [])
      assert.deepStrictEqual(bash("microagent", "--state-dir", stateDir, "start", ""), ["alpha", "beta"])
    } finally {
      stopRuntime(elsewhere)
      NodeFs.rmSync(elsewhere, { recursive: true, force: true })
    }
  })

  it("zsh loads the script and completes through bashcompinit", () => {
    const check = spawnSync("zsh", ["-n", scripts.zsh!], { encoding: "utf8" })
    assert.strictEqual(check.status, 0, check.stderr)
    assert.deepStrictEqual(zsh("microagent", "start", ""), ["alpha", "beta"])
    assert.includeMembers([...zsh("microagent", "image", "")], ["pull", "list"])
    assert.deepStrictEqual(zsh("microagent", "run", "--profile", ""), ["tiny", "small", "medium", "large"])
  })

  it("fish completes verbs, subcommands, flag values and the store's names", () => {
    assert.includeMembers([...fish("microagent ima")], ["image", "images"])
    assert.includeMembers([...fish("microagent image ")], ["pull", "list", "inspect"])
    assert.deepStrictEqual([...fish("microagent run --profile ")].sort(), [
      "large",
      "medium",
      "small",
      "tiny"
    ])
    assert.deepStrictEqual(fish("microagent start "), ["alpha", "beta"])
    assert.deepStrictEqual(fish("microagent halt --timeout 5 "), ["alpha", "beta"])
    assert.deepStrictEqual(fish("microagent volume rm "), ["cache"])
    assert.deepStrictEqual([...fish("microagent completion ")].sort(), ["bash", "fish", "zsh"])
  })
})

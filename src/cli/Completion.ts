/**
 * Shell completion scripts for bash, zsh and fish, generated from the command tree (src/cli/Describe.ts)
 * and the verb registry, so a new command or flag completes without further work. Names that live in
 * the store (workspaces, images, volumes, networks) are asked of the CLI itself at completion time,
 * through the list commands' `--quiet` form, in the state directory the command line names.
 */
import { Args, Command } from "@effect/cli"
import { type ArgSpec, type CommandSpec, type FlagSpec, spellingsOf } from "./Describe.ts"
import { writeStdout } from "./Output.ts"
import { verbs } from "./Verbs.ts"

export const shells = ["bash", "zsh", "fish"] as const
export type Shell = (typeof shells)[number]

/** What a position on the command line holds, for completion. */
export type Kind =
  | { readonly _tag: "Words"; readonly words: ReadonlyArray<string> }
  | { readonly _tag: "Names"; readonly of: Store; readonly extra?: ReadonlyArray<string> }
  | { readonly _tag: "Files" }
  | { readonly _tag: "Nothing" }

export type Store = "workspaces" | "images" | "volumes" | "networks"

const words = (list: ReadonlyArray<string>): Kind => ({ _tag: "Words", words: list })
const names = (of: Store, extra?: ReadonlyArray<string>): Kind =>
  extra === undefined ? { _tag: "Names", of } : { _tag: "Names", of, extra }
const files: Kind = { _tag: "Files" }
const nothing: Kind = { _tag: "Nothing" }

/** The list command (with `--quiet`) that prints each store's names. */
export const listCommandOf: Record<Store, ReadonlyArray<string>> = {
  workspaces: ["list"],
  images: ["image", "list"],
  volumes: ["volume", "list"],
  networks: ["network", "list"]
}

/**
 * What each command's positional arguments name, by command path. Every command that takes
 * positionals is listed (a test holds the table to the tree), so a new one is a decision, not a guess.
 */
export const positionalKinds: Record<string, ReadonlyArray<Kind>> = {
  init: [nothing],
  run: [names("images")],
  dispatch: [names("images")],
  create: [nothing],
  apply: [names("workspaces")],
  start: [names("workspaces")],
  exec: [names("workspaces")],
  connect: [names("workspaces")],
  inspect: [names("workspaces")],
  wait: [names("workspaces")],
  result: [names("workspaces")],
  supervise: [names("workspaces")],
  halt: [names("workspaces")],
  kill: [names("workspaces")],
  pause: [names("workspaces")],
  quarantine: [names("workspaces")],
  resume: [names("workspaces")],
  delete: [names("workspaces")],
  logs: [names("workspaces")],
  events: [names("workspaces")],
  stats: [names("workspaces")],
  resize: [names("workspaces")],
  egress: [names("workspaces")],
  cp: [files, files],
  commit: [names("workspaces"), nothing],
  clone: [names("workspaces"), nothing],
  fork: [names("workspaces")],
  "artifacts ls": [names("workspaces")],
  "artifacts get": [names("workspaces"), nothing, files],
  "artifacts rm": [names("workspaces")],
  "image pull": [nothing],
  "image import": [files],
  "image push": [names("images")],
  "image save": [names("images")],
  "registry login": [nothing],
  "registry logout": [nothing],
  "image inspect": [names("images")],
  "image tag": [names("images"), nothing],
  "image rm": [names("images")],
  "image delete": [names("images")],
  "volume create": [nothing],
  "volume inspect": [names("volumes")],
  "volume rm": [names("volumes")],
  "volume delete": [names("volumes")],
  "volume resize": [names("volumes")],
  "model pull": [nothing],
  "model inspect": [nothing],
  "model delete": [nothing],
  "model rm": [nothing],
  "model serve": [nothing],
  "model stop": [nothing],
  "secret check": [nothing],
  "network create": [nothing],
  "network inspect": [names("networks")],
  "network rm": [names("networks")],
  "perf boot": [names("images")],
  "perf footprint": [names("workspaces")],
  "perf steady": [names("workspaces")],
  "state restore": [files],
  "snapshot create": [names("workspaces")],
  "snapshot list": [names("workspaces")],
  "snapshot ls": [names("workspaces")],
  "snapshot delete": [names("workspaces"), nothing],
  "snapshot rm": [names("workspaces"), nothing],
  "template list": [],
  "template ls": [],
  "template prune": [],
  completion: [words(shells)]
}

/** What a flag's value names: its choices, a store's names for the flags that take one, or a path. */
export const flagValueKind = (flag: FlagSpec): Kind => {
  if (flag.choices.length > 0) return words(flag.choices)
  switch (flag.name) {
    case "--image":
      return names("images")
    case "--network":
      return names("networks", ["user", "isolated"])
  }
  if (flag.kind === "path" || /file|dir|path/i.test(flag.placeholder ?? "")) return files
  return nothing
}

const globalFlags: ReadonlyArray<{ readonly spelling: string; readonly value: Kind | undefined }> = [
  { spelling: "--json", value: undefined },
  { spelling: "--output", value: words(["json", "text"]) },
  { spelling: "--state-dir", value: files },
  { spelling: "--backend", value: words(["qemu", "fake"]) },
  { spelling: "--no-color", value: undefined },
  { spelling: "--help", value: undefined }
]

/** One command, flattened for the generators. */
interface Entry {
  readonly path: string
  readonly spec: CommandSpec
  readonly summary: string
  readonly guestArgs: boolean
}

const entries = (specs: ReadonlyArray<CommandSpec>): ReadonlyArray<Entry> =>
  specs.flatMap((spec) => {
    const verb = verbs.find((v) => v.name === spec.name)
    const top: Entry = {
      path: spec.name,
      spec,
      summary: verb?.summary ?? spec.description,
      guestArgs: verb?.guestArgs !== undefined
    }
    return [
      top,
      ...spec.subcommands.map((sub) => ({
        path: `${spec.name} ${sub.name}`,
        spec: sub,
        summary: sub.description,
        guestArgs: false
      }))
    ]
  })

/** Top-level words: each verb with its aliases, `help` and `version` included. */
const topWords = (): ReadonlyArray<
  { readonly word: string; readonly verb: string; readonly summary: string }
> =>
  verbs.flatMap((verb) =>
    [verb.name, ...(verb.aliases ?? [])].map((word) => ({ word, verb: verb.name, summary: verb.summary }))
  )

const kindOfPositional = (entry: Entry, index: number, arg: ArgSpec | undefined): Kind => {
  const listed = positionalKinds[entry.path]?.[index]
  if (listed !== undefined) return listed
  if (arg?.kind === "choice") return words(arg.choices)
  if (arg?.kind === "path") return files
  return nothing
}

/** Single-quoted for sh. */
const q = (text: string): string => `'${text.replace(/'/g, `'\\''`)}'`

// bash (and zsh through bashcompinit) ---------------------------------------------------------------

/** The shell code that puts the candidates for `kind` into COMPREPLY, matching `$cur`. */
const bashReply = (kind: Kind): string => {
  switch (kind._tag) {
    case "Words":
      return `COMPREPLY=($(compgen -W ${q(kind.words.join(" "))} -- "$cur"))`
    case "Names":
      return `COMPREPLY=($(compgen -W "$(__microagent_names ${kind.of}) ${
        (kind.extra ?? []).join(" ")
      }" -- "$cur"))`
    case "Files":
      return `__microagent_files`
    case "Nothing":
      return `COMPREPLY=()`
  }
}

const bashCase = (arms: ReadonlyArray<readonly [ReadonlyArray<string>, string]>, fallback: string): string =>
  [
    `  case "$1" in`,
    ...arms.filter(([patterns]) => patterns.length > 0).map(([patterns, body]) =>
      `    ${patterns.map(q).join("|")}) ${body} ;;`
    ),
    `    *) ${fallback} ;;`,
    `  esac`
  ].join("\n")

const bashScript = (specs: ReadonlyArray<CommandSpec>): string => {
  const all = entries(specs)
  const top = topWords()
  const flagArms = all.map((e): readonly [ReadonlyArray<string>, string] => [
    [e.path],
    `echo ${q(e.spec.flags.flatMap(spellingsOf).join(" "))}`
  ])
  const valueFlagArms = all.map((e): readonly [ReadonlyArray<string>, string] => [
    e.spec.flags.filter((f) => f.kind !== "bool").flatMap(spellingsOf).map((s) => `${e.path} ${s}`),
    "return 0"
  ])
  const valueArms = [
    ...globalFlags.filter((g) => g.value !== undefined).map((g): readonly [ReadonlyArray<string>, string] => [
      [`* ${g.spelling}`],
      bashReply(g.value!)
    ]),
    ...all.flatMap((e) =>
      e.spec.flags.filter((f) => f.kind !== "bool").map((f): readonly [ReadonlyArray<string>, string] => [
        spellingsOf(f).map((s) => `${e.path} ${s}`),
        bashReply(flagValueKind(f))
      ])
    )
  ]
  const positionalArms = all.flatMap((e) =>
    Array.from(
      { length: Math.max(e.spec.args.length, positionalKinds[e.path]?.length ?? 0) },
      (_, i) => [[`${e.path} ${i}`], bashReply(kindOfPositional(e, i, e.spec.args[i]))] as const
    )
  )
  return `# microagent completion for bash (and zsh, through bashcompinit).
# Load it in the current shell:  source <(microagent completion bash)
# or install it:                 microagent completion bash > ~/.local/share/bash-completion/completions/microagent

__microagent_names() {
  local cmd=("\${__microagent_cli[@]}")
  case "$1" in
    workspaces) cmd+=(${listCommandOf.workspaces.join(" ")}) ;;
    images) cmd+=(${listCommandOf.images.join(" ")}) ;;
    volumes) cmd+=(${listCommandOf.volumes.join(" ")}) ;;
    networks) cmd+=(${listCommandOf.networks.join(" ")}) ;;
  esac
  "\${cmd[@]}" --quiet 2>/dev/null
}

__microagent_files() {
  # bash falls back to its own file completion (complete -o default) when nothing is offered;
  # zsh's bashcompinit does not, so it is asked for file names.
  if [ -n "\${ZSH_VERSION:-}" ]; then COMPREPLY=($(compgen -f -- "$cur")); else COMPREPLY=(); fi
}

__microagent_verb() {
${bashCase(top.map(({ word, verb }) => [[word], `echo ${q(verb)}`] as const), "return 1")}
}

__microagent_subcommands() {
${
    bashCase(
      specs.filter((s) => s.subcommands.length > 0).map((s) =>
        [[s.name], `echo ${q(s.subcommands.map((c) => c.name).join(" "))}`] as const
      ),
      "return 1"
    )
  }
}

__microagent_guest_args() {
${bashCase([[all.filter((e) => e.guestArgs).map((e) => e.path), "return 0"]], "return 1")}
}

__microagent_flags() {
${bashCase(flagArms, "return 0")}
}

__microagent_takes_value() {
  case "$1" in
    '* --output'|'* --state-dir'|'* --backend') return 0 ;;
  esac
${bashCase(valueFlagArms, "return 1")}
}

__microagent_value() {
${bashCase(valueArms, "COMPREPLY=()")}
}

__microagent_positional() {
${bashCase(positionalArms, "__microagent_files")}
}

_microagent() {
  # (\`path\` would be zsh's $PATH array.)
  local cur="\${COMP_WORDS[COMP_CWORD]}"
  local __microagent_cli=("\${COMP_WORDS[0]}")
  local cmdpath="" verb="" subs="" positionals=0 i word
  for ((i = 1; i < COMP_CWORD; i++)); do
    word="\${COMP_WORDS[i]}"
    if [ "$word" = "--" ]; then
      [ -n "$verb" ] && __microagent_guest_args "$cmdpath" && { __microagent_files; return; }
      continue
    fi
    if [ "$word" = "--state-dir" ] && [ $((i + 1)) -lt "$COMP_CWORD" ]; then
      __microagent_cli+=(--state-dir "\${COMP_WORDS[i + 1]}")
    fi
    case "$word" in
      --*=*) continue ;;
      -*)
        if __microagent_takes_value "\${cmdpath:-*} $word" || __microagent_takes_value "* $word"; then
          i=$((i + 1))
        fi
        continue ;;
    esac
    if [ -z "$verb" ]; then
      verb=$(__microagent_verb "$word") || return 0
      cmdpath="$verb"
      subs=$(__microagent_subcommands "$verb") || subs=""
    elif [ -n "$subs" ]; then
      cmdpath="$verb $word"
      subs=""
    else
      if [ "$positionals" -ge 1 ] && __microagent_guest_args "$cmdpath"; then
        __microagent_files
        return
      fi
      positionals=$((positionals + 1))
    fi
  done
  local prev="\${COMP_WORDS[COMP_CWORD - 1]}"
  if [ "$COMP_CWORD" -gt 1 ] && [[ "$prev" == -* ]] && __microagent_takes_value "\${cmdpath:-*} $prev"; then
    __microagent_value "\${cmdpath:-*} $prev"
    return
  fi
  if [[ "$cur" == -* ]]; then
    COMPREPLY=($(compgen -W "$(__microagent_flags "$cmdpath") ${
    globalFlags.map((g) => g.spelling).join(" ")
  }" -- "$cur"))
    return
  fi
  if [ -z "$verb" ]; then
    COMPREPLY=($(compgen -W ${q(top.map((t) => t.word).join(" "))} -- "$cur"))
  elif [ "$verb" = help ]; then
    COMPREPLY=($(compgen -W ${q(["all", ...verbs.map((v) => v.name)].join(" "))} -- "$cur"))
  elif [ -n "$subs" ]; then
    COMPREPLY=($(compgen -W "$subs" -- "$cur"))
  else
    __microagent_positional "$cmdpath $positionals"
  fi
}
`
}

const bashRegistration = "complete -o default -F _microagent microagent\n"

const zshScript = (specs: ReadonlyArray<CommandSpec>): string =>
  `#compdef microagent
# microagent completion for zsh (through bash's completion functions).
# Load it in the current shell:  source <(microagent completion zsh)
# or install it as _microagent in a directory of $fpath.
autoload -U +X compinit && { (( $+functions[compdef] )) || compinit }
autoload -U +X bashcompinit && bashcompinit
${bashScript(specs)}${bashRegistration}`

// fish --------------------------------------------------------------------------------------------

const fishReply = (kind: Kind): string | undefined => {
  switch (kind._tag) {
    case "Words":
      return `-f -a ${q(kind.words.join(" "))}`
    case "Names":
      return `-f -a ${q(`(__microagent_names ${kind.of}) ${(kind.extra ?? []).join(" ")}`.trim())}`
    case "Files":
      return `-F`
    case "Nothing":
      return `-f`
  }
}

const fishFlag = (condition: string, flag: FlagSpec): string => {
  const spellings = spellingsOf(flag)
  const parts = spellings.map((s) => (s.startsWith("--") ? `-l ${s.slice(2)}` : `-s ${s.slice(1)}`))
  const value = flag.kind === "bool" ? "" : ` -r ${fishReply(flagValueKind(flag))}`
  return `complete -c microagent -n ${q(condition)} ${parts.join(" ")}${value} -d ${q(flag.description)}`
}

/** Every spelling of a flag that takes a value, in any command, and the global ones. */
const valueSpellings = (all: ReadonlyArray<Entry>): ReadonlyArray<string> => [
  ...new Set([
    ...globalFlags.filter((g) => g.value !== undefined).map((g) => g.spelling),
    ...all.flatMap((e) => e.spec.flags.filter((f) => f.kind !== "bool").flatMap(spellingsOf))
  ])
]

const fishScript = (specs: ReadonlyArray<CommandSpec>): string => {
  const all = entries(specs)
  const top = topWords()
  const lines: Array<string> = [
    "# microagent completion for fish.",
    "# Load it in the current shell:  microagent completion fish | source",
    "# or install it:                 microagent completion fish > ~/.config/fish/completions/microagent.fish",
    "",
    "function __microagent_names",
    "    set -l cmd (commandline -opc)[1]",
    "    set -l words (commandline -opc)",
    "    set -l dir (contains -i -- --state-dir $words)",
    "    set -l extra",
    '    if test -n "$dir"; and test (count $words) -gt $dir',
    "        set extra --state-dir $words[(math $dir + 1)]",
    "    end",
    "    switch $argv[1]",
    ...(Object.entries(listCommandOf) as Array<[Store, ReadonlyArray<string>]>).map(([store, cmd]) =>
      `        case ${store}\n            $cmd $extra ${cmd.join(" ")} --quiet 2>/dev/null`
    ),
    "    end",
    "end",
    "",
    "# The command path typed so far (verb, subcommand, positionals), without flags and their values.",
    "function __microagent_path",
    "    set -l words (commandline -opc)[2..-1]",
    "    set -l path",
    "    set -l skip 0",
    `    set -l valued ${valueSpellings(all).join(" ")}`,
    "    for word in $words",
    "        if test $skip -eq 1",
    "            set skip 0",
    "            continue",
    "        end",
    "        if string match -q -- '-*' $word",
    "            contains -- $word $valued; and set skip 1",
    "            continue",
    "        end",
    "        set -a path $word",
    "    end",
    "    string join ' ' -- $path",
    "end",
    "",
    "function __microagent_at",
    "    # true when the path typed so far starts with the given words and has exactly N more words",
    "    set -l n $argv[1]",
    "    set -l want $argv[2..-1]",
    "    set -l have (string split ' ' -- (__microagent_path))",
    "    test (count $have) -eq (math (count $want) + $n); or return 1",
    "    for i in (seq (count $want))",
    '        test "$have[$i]" = "$want[$i]"; or return 1',
    "    end",
    "end",
    "",
    "complete -c microagent -f",
    ...globalFlags.map((g) =>
      `complete -c microagent -l ${g.spelling.slice(2)}${g.value ? ` -r ${fishReply(g.value)}` : ""}`
    ),
    ...top.map(({ word, summary }) =>
      `complete -c microagent -n '__microagent_at 0' -a ${q(word)} -d ${q(summary)}`
    ),
    "complete -c microagent -n '__microagent_at 1 help' -a "
    + q(["all", ...verbs.map((v) => v.name)].join(" "))
  ]
  for (const entry of all) {
    const words = entry.path.split(" ")
    // Aliases of a top-level verb share its completions.
    const spellings = words.length === 1
      ? [words[0]!, ...(verbs.find((v) => v.name === words[0])?.aliases ?? [])]
      : [words[0]!]
    for (const head of spellings) {
      const path = [head, ...words.slice(1)]
      const under = `__microagent_path | string match -qr -- ${q(`^${path.join(" ")}( |$)`)}`
      for (const flag of entry.spec.flags) lines.push(fishFlag(under, flag))
      if (words.length === 1) {
        for (const sub of entry.spec.subcommands) {
          lines.push(
            `complete -c microagent -n ${q(`__microagent_at 0 ${path.join(" ")}`)} -a ${q(sub.name)} -d ${
              q(sub.description)
            }`
          )
        }
      }
      const count = Math.max(entry.spec.args.length, positionalKinds[entry.path]?.length ?? 0)
      for (let i = 0; i < count; i++) {
        lines.push(
          `complete -c microagent -n ${q(`__microagent_at ${i} ${path.join(" ")}`)} ${
            fishReply(kindOfPositional(entry, i, entry.spec.args[i]))
          }`
        )
      }
      if (entry.guestArgs) {
        lines.push(
          `complete -c microagent -n ${q(`not __microagent_at 0 ${path.join(" ")}; and ${under}`)} -F`
        )
      }
    }
  }
  return `${lines.join("\n")}\n`
}

/** The completion script for `shell`. */
export const completionScript = (shell: Shell, specs: ReadonlyArray<CommandSpec>): string => {
  switch (shell) {
    case "bash":
      return `${bashScript(specs)}${bashRegistration}`
    case "zsh":
      return zshScript(specs)
    case "fish":
      return fishScript(specs)
  }
}

/** `microagent completion bash|zsh|fish`: the script on stdout. */
export const completionCommand = (specs: () => ReadonlyArray<CommandSpec>) =>
  Command.make(
    "completion",
    {
      shell: Args.choice(shells.map((shell) => [shell, shell] as [string, Shell]), { name: "shell" }).pipe(
        Args.withDescription("the shell to complete for")
      )
    },
    ({ shell }) => writeStdout(completionScript(shell, specs()))
  ).pipe(Command.withDescription(
    "print a shell completion script for bash, zsh or fish. Load it with "
      + "`source <(microagent completion bash)` (or zsh), or `microagent completion fish | source`; "
      + "to keep it, write it to ~/.local/share/bash-completion/completions/microagent, to a file "
      + "named _microagent in a directory of zsh's $fpath, or to ~/.config/fish/completions/microagent.fish"
  ))

/**
 * The command registry: every verb, its help group, its aliases, and which of its flags take a value
 * (needed to find where the guest's argv begins in `run IMAGE CMD...` and `exec NAME CMD...`).
 */
export interface Verb {
  readonly name: string
  readonly group: "Getting started" | "Run" | "Lifecycle" | "Observe" | "Resources" | "Maintenance" | "Misc"
  readonly summary: string
  readonly usage: string
  readonly aliases?: ReadonlyArray<string>
  /** Flags of this verb that take a value, with their short forms. */
  readonly valueFlags?: ReadonlyArray<string>
  /** A group of subcommands (`image pull`, …): help may name the subcommand. */
  readonly subcommands?: boolean
  /** `run` and `exec`: everything after the first positional is the guest's argv. */
  readonly guestArgv?: boolean
}

const workspaceFlags = [
  "--name",
  "-e",
  "--env",
  "--profile",
  "--memory",
  "--cpus",
  "--size-mib",
  "--file",
  "--hostname",
  "--network",
  "-p",
  "--publish",
  "--restart",
  "--boot-timeout",
  "-v",
  "--volume",
  "--secret",
  "--output"
]
const execFlags = [
  "-e",
  "--env",
  "--cwd",
  "--user",
  "--timeout",
  "--stdin",
  "--stdout-limit",
  "--stderr-limit"
]

export const verbs: ReadonlyArray<Verb> = [
  {
    name: "doctor",
    group: "Getting started",
    usage: "microagent doctor",
    summary: "check what this host has and lacks"
  },
  {
    name: "run",
    group: "Run",
    usage: "microagent run [flags] [IMAGE] [--] [CMD [ARG...]]",
    summary: "boot a one-shot workspace, run a command, tear it down",
    valueFlags: [...workspaceFlags, "--timeout", "--stdin", "--cwd", "--user"],
    guestArgv: true
  },
  {
    name: "create",
    group: "Run",
    usage: "microagent create [flags] [--image REF] [NAME]",
    summary: "create a persistent workspace (state: prepared)",
    valueFlags: [...workspaceFlags, "--entrypoint"]
  },
  {
    name: "start",
    group: "Run",
    usage: "microagent start [--boot-timeout S] [--secret NAME=SOURCE] NAME",
    summary: "boot a workspace from its disk",
    valueFlags: ["--boot-timeout", "--secret"]
  },
  {
    name: "exec",
    group: "Run",
    usage: "microagent exec [flags] NAME [--] CMD [ARG...]",
    summary: "run a command in a running workspace",
    valueFlags: execFlags,
    guestArgv: true
  },
  {
    name: "cp",
    group: "Run",
    usage: "microagent cp SRC DST  (one of them WORKSPACE:/absolute/path)",
    summary: "copy files and directories between the host and a workspace"
  },
  {
    name: "connect",
    group: "Run",
    usage: "microagent connect [--detach-keys KEYS] NAME [-- CMD [ARG...]]",
    summary: "an interactive shell in a running workspace (detach: Ctrl-])",
    valueFlags: ["--detach-keys", "-e", "--env"],
    guestArgv: true
  },
  {
    name: "inspect",
    group: "Lifecycle",
    usage: "microagent inspect NAME",
    summary: "show a workspace's record and state",
    aliases: ["status"]
  },
  {
    name: "wait",
    group: "Lifecycle",
    usage: "microagent wait [--timeout S] NAME",
    summary: "block until a workspace settles",
    valueFlags: ["--timeout"]
  },
  {
    name: "halt",
    group: "Lifecycle",
    usage: "microagent halt [--timeout S] [--reason TEXT] NAME",
    summary: "shut a workspace down gracefully (bounded, then forced)",
    aliases: ["stop"],
    valueFlags: ["--timeout", "--reason"]
  },
  {
    name: "kill",
    group: "Lifecycle",
    usage: "microagent kill NAME",
    summary: "stop a workspace's VM at once"
  },
  {
    name: "delete",
    group: "Lifecycle",
    usage: "microagent delete [--yes|--force] NAME...",
    summary: "delete workspaces and their disks",
    aliases: ["rm"]
  },
  { name: "list", group: "Observe", usage: "microagent list", summary: "list workspaces", aliases: ["ls"] },
  { name: "ps", group: "Observe", usage: "microagent ps", summary: "list running workspaces" },
  {
    name: "logs",
    group: "Observe",
    usage: "microagent logs [--follow] NAME",
    summary: "show a workspace's console log",
    aliases: ["log"]
  },
  {
    name: "events",
    group: "Observe",
    usage: "microagent events [--follow] NAME",
    summary: "show a workspace's lifecycle events"
  },
  {
    name: "artifacts",
    group: "Observe",
    usage: "microagent artifacts ls|get|rm WORKSPACE ...",
    summary: "list, fetch and remove a workspace's declared outputs",
    aliases: ["artifact"],
    subcommands: true
  },
  {
    name: "image",
    group: "Resources",
    usage: "microagent image pull|import|list|inspect|tag|rm|prune ...",
    summary: "pull, import and manage OCI images",
    aliases: ["images"],
    subcommands: true
  },
  {
    name: "kernel",
    group: "Resources",
    usage: "microagent kernel list|install|verify|ensure ...",
    summary: "install and verify guest kernels",
    subcommands: true
  },
  {
    name: "volume",
    group: "Resources",
    usage: "microagent volume create|ls|inspect|rm|resize ...",
    summary: "create and manage named volumes",
    aliases: ["volumes"],
    subcommands: true
  },
  {
    name: "secret",
    group: "Resources",
    usage: "microagent secret check NAME=SOURCE...",
    summary: "resolve secret references without delivering them",
    aliases: ["secrets"],
    subcommands: true
  },
  {
    name: "network",
    group: "Resources",
    usage: "microagent network create|ls|inspect|rm ...",
    summary: "create and manage named networks",
    subcommands: true,
    valueFlags: ["--subnet"]
  },
  {
    name: "profiles",
    group: "Resources",
    usage: "microagent profiles",
    summary: "show the resource profiles"
  },
  {
    name: "perf",
    group: "Maintenance",
    usage: "microagent perf boot [--runs N] [IMAGE] | microagent perf footprint [NAME]",
    summary: "measure boot phases and host footprint",
    valueFlags: ["--runs", "--network"],
    subcommands: true
  },
  {
    name: "runtime",
    group: "Maintenance",
    usage: "microagent runtime [--idle-seconds S]",
    summary: "serve this state directory's runtime (started on demand)",
    valueFlags: ["--idle-seconds"]
  },
  {
    name: "state",
    group: "Maintenance",
    usage: "microagent state check | microagent state backup [--to FILE] | microagent state restore [BACKUP]",
    summary: "check, back up and restore the state database",
    valueFlags: ["--to"],
    subcommands: true
  },
  { name: "gc", group: "Maintenance", usage: "microagent gc", summary: "reap what a crash left behind" },
  {
    name: "serve",
    group: "Misc",
    usage: "microagent serve rpc --socket PATH | microagent serve mcp",
    summary: "serve the RPC API on a unix socket, or MCP on stdio",
    valueFlags: ["--socket"]
  },
  { name: "version", group: "Misc", usage: "microagent version", summary: "print the version" },
  { name: "help", group: "Misc", usage: "microagent help [COMMAND]", summary: "show help for a command" }
]

export const findVerb = (word: string): Verb | undefined =>
  verbs.find((verb) => verb.name === word || verb.aliases?.includes(word))

/** Optimal string alignment distance: edits, with a swap of neighbours counting as one. */
const distance = (a: string, b: string): number => {
  const d = Array.from(
    { length: a.length + 1 },
    (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0))
  )
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost)
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i]![j] = Math.min(d[i]![j]!, d[i - 2]![j - 2]! + 1)
      }
    }
  }
  return d[a.length]![b.length]!
}

/** The nearest verb or alias: within edit distance 2, or the unique one with this 3+ character prefix. */
export const suggestVerb = (word: string): string | undefined => {
  const names = verbs.flatMap((verb) => [verb.name, ...(verb.aliases ?? [])])
  const prefixed = word.length >= 3 ? names.filter((name) => name.startsWith(word)) : []
  if (prefixed.length === 1) return prefixed[0]
  const ranked = names.map((name) => ({ name, d: distance(word, name) })).sort((a, b) => a.d - b.d)
  return ranked[0] !== undefined && ranked[0].d <= 2 ? ranked[0].name : undefined
}

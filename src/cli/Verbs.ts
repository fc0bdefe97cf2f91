/**
 * The command registry: every verb, its help group, its one-line summary and its aliases, and for
 * `run`, `exec` and `connect` that a guest's argv follows their first argument. Flags, arguments and
 * descriptions come from each command's @effect/cli descriptor (src/cli/Describe.ts).
 */
export interface Verb {
  readonly name: string
  readonly group: "Getting started" | "Run" | "Lifecycle" | "Observe" | "Resources" | "Maintenance" | "Misc"
  readonly summary: string
  /**
   * The usage line, only where the one generated from the command's flags and arguments cannot say it
   * (src/cli/Help.ts writes the others).
   */
  readonly usage?: string
  readonly aliases?: ReadonlyArray<string>
  /**
   * Words that take a value beyond the flags the command's descriptor declares (those are found
   * there): needed to find where the guest's argv begins.
   */
  readonly valueFlags?: ReadonlyArray<string>
  /** A group of subcommands (`image pull`, …): help may name the subcommand. */
  readonly subcommands?: boolean
  /**
   * `run`, `exec` and `connect`: everything after the first positional is the guest's argv, written
   * in usage as this.
   */
  readonly guestArgs?: string
}

export const verbs: ReadonlyArray<Verb> = [
  {
    name: "doctor",
    group: "Getting started",
    summary: "check what this host has and lacks"
  },
  {
    name: "init",
    group: "Getting started",
    summary: "write an agent scaffold (spec, agent script, README, demo input)"
  },
  {
    name: "run",
    group: "Run",
    summary: "boot a one-shot workspace, run a command, tear it down",
    guestArgs: "[--] [CMD [ARG...]]"
  },
  {
    name: "dispatch",
    group: "Run",
    summary: "run, with a receipt of its network activity",
    guestArgs: "[--] [CMD [ARG...]]"
  },
  {
    name: "create",
    group: "Run",
    summary: "create a persistent workspace (state: prepared)"
  },
  {
    name: "start",
    group: "Run",
    summary: "boot a workspace from its disk"
  },
  {
    name: "exec",
    group: "Run",
    summary: "run a command in a running workspace",
    guestArgs: "[--] CMD [ARG...]"
  },
  {
    name: "cp",
    group: "Run",
    summary: "copy files and directories between the host and a workspace"
  },
  {
    name: "commit",
    group: "Run",
    summary: "save a stopped workspace's root filesystem as an image"
  },
  {
    name: "clone",
    group: "Run",
    summary: "copy a stopped workspace to a new one with its own identity"
  },
  {
    name: "fork",
    group: "Run",
    summary: "running copies of a running workspace, from one capture of it"
  },
  {
    name: "connect",
    group: "Run",
    summary: "an interactive shell in a running workspace (detach: Ctrl-])",
    guestArgs: "[-- CMD [ARG...]]"
  },
  {
    name: "inspect",
    group: "Lifecycle",
    summary: "show a workspace's record and state",
    aliases: ["status"]
  },
  {
    name: "wait",
    group: "Lifecycle",
    summary: "block until a workspace settles"
  },
  {
    name: "result",
    group: "Lifecycle",
    summary: "show the result of a workspace's entrypoint"
  },
  {
    name: "apply",
    group: "Lifecycle",
    summary: "change a workspace's record to match a spec, without a rebuild"
  },
  {
    name: "supervise",
    group: "Lifecycle",
    summary: "keep a workspace up per its restart policy (foreground; --install for a systemd unit)"
  },
  {
    name: "halt",
    group: "Lifecycle",
    summary: "shut a workspace down gracefully (bounded, then forced)",
    aliases: ["stop"]
  },
  {
    name: "kill",
    group: "Lifecycle",
    summary: "stop a workspace's VM at once"
  },
  {
    name: "pause",
    group: "Lifecycle",
    summary: "freeze a running workspace (memory, disk and network kept)"
  },
  {
    name: "quarantine",
    group: "Lifecycle",
    summary: "cut off, freeze, capture and stop a workspace into custody"
  },
  {
    name: "resume",
    group: "Lifecycle",
    summary: "let a paused workspace run on"
  },
  {
    name: "delete",
    group: "Lifecycle",
    summary: "delete workspaces and their disks",
    aliases: ["rm"]
  },
  {
    name: "resize",
    group: "Lifecycle",
    summary: "grow or shrink a stopped workspace's root disk"
  },
  { name: "list", group: "Observe", summary: "list workspaces", aliases: ["ls"] },
  { name: "ps", group: "Observe", summary: "list running workspaces" },
  {
    name: "logs",
    group: "Observe",
    summary: "show a workspace's console log",
    aliases: ["log"]
  },
  {
    name: "events",
    group: "Observe",
    summary: "show a workspace's lifecycle events"
  },
  {
    name: "stats",
    group: "Observe",
    summary: "CPU, memory, I/O and disk use of a running workspace"
  },
  {
    name: "egress",
    group: "Observe",
    summary: "show a workspace's egress audit log"
  },
  {
    name: "artifacts",
    group: "Observe",
    summary: "list, fetch and remove a workspace's declared outputs",
    aliases: ["artifact"],
    subcommands: true
  },
  {
    name: "image",
    group: "Resources",
    summary: "pull, import, push and manage OCI images",
    aliases: ["images"],
    subcommands: true
  },
  {
    name: "kernel",
    group: "Resources",
    summary: "install and verify guest kernels",
    subcommands: true
  },
  {
    name: "volume",
    group: "Resources",
    summary: "create and manage named volumes",
    aliases: ["volumes"],
    subcommands: true
  },
  {
    name: "model",
    group: "Resources",
    summary: "pull, manage and serve local GGUF models",
    aliases: ["models"],
    subcommands: true
  },
  {
    name: "snapshot",
    group: "Resources",
    summary: "capture, list and delete workspace snapshots",
    aliases: ["snapshots"],
    subcommands: true
  },
  {
    name: "template",
    group: "Resources",
    summary: "list and prune warm-start templates",
    aliases: ["templates"],
    subcommands: true
  },
  {
    name: "secret",
    group: "Resources",
    summary: "resolve secret references without delivering them",
    aliases: ["secrets"],
    subcommands: true
  },
  {
    name: "network",
    group: "Resources",
    summary: "create and manage named networks",
    subcommands: true
  },
  {
    name: "registry",
    group: "Resources",
    summary: "log in to registries for image pull and push",
    subcommands: true
  },
  {
    name: "profiles",
    group: "Resources",
    summary: "show the resource profiles"
  },
  {
    name: "perf",
    group: "Maintenance",
    summary: "measure boot phases and host footprint",
    subcommands: true
  },
  {
    name: "runtime",
    group: "Maintenance",
    summary: "serve this state directory's runtime (started on demand)"
  },
  {
    name: "state",
    group: "Maintenance",
    summary: "check, back up and restore the state database",
    subcommands: true
  },
  { name: "gc", group: "Maintenance", summary: "reap what a crash left behind" },
  {
    name: "serve",
    group: "Misc",
    summary: "serve the RPC API, MCP on stdio, or this host as a cluster runner",
    subcommands: true
  },
  { name: "completion", group: "Misc", summary: "print a shell completion script (bash, zsh, fish)" },
  { name: "version", group: "Misc", summary: "print the version" },
  {
    name: "help",
    group: "Misc",
    summary: "show help for a command; `help all` lists every command"
  }
]

export const findVerb = (word: string): Verb | undefined =>
  verbs.find((verb) => verb.name === word || verb.aliases?.includes(word))

/** Optimal string alignment distance: edits, with a swap of neighbours counting as one. */
export const distance = (a: string, b: string): number => {
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

/**
 * The candidate a mistyped word most likely meant: the only one it is a prefix of (3+ characters),
 * else the nearest within edit distance 2.
 */
export const nearest = (word: string, candidates: ReadonlyArray<string>): string | undefined => {
  const prefixed = word.length >= 3 ? [...new Set(candidates.filter((name) => name.startsWith(word)))] : []
  if (prefixed.length === 1) return prefixed[0]
  const ranked = candidates.map((name) => ({ name, d: distance(word, name) })).sort((a, b) => a.d - b.d)
  return ranked[0] !== undefined && ranked[0].d <= 2 ? ranked[0].name : undefined
}

/** The verb a mistyped word most likely meant (a unique prefix of a verb or its aliases counts). */
export const suggestVerb = (word: string): string | undefined => {
  const prefixed = word.length >= 3
    ? verbs.filter((verb) => [verb.name, ...(verb.aliases ?? [])].some((name) => name.startsWith(word)))
    : []
  if (prefixed.length === 1) return prefixed[0]!.name
  return nearest(word, verbs.flatMap((verb) => [verb.name, ...(verb.aliases ?? [])]))
}

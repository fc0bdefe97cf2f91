/**
 * Every help text the CLI prints, and the per-command part of docs/cli.md, rendered from one model of
 * the command tree (src/cli/Describe.ts, read from @effect/cli's descriptors) plus the verb registry
 * (src/cli/Verbs.ts: groups, summaries, aliases) and the examples (src/cli/Examples.ts). A flag or a
 * command added to the tree shows up here with nothing else to do.
 *
 * Shape, as docker, git and kubectl print it: a usage line, one sentence, flags one per line
 * (`-e, --env KEY=VALUE   description`) grouped when a command has many, defaults inline, then
 * examples. Width follows the terminal (80 columns otherwise), long descriptions wrap with a hanging
 * indent, and escape sequences are written only to a colour terminal.
 *
 * Conventions read from descriptions: a trailing "(alias: ls)" names a sibling command that does the
 * same (listed together, once); "(alias of ls)" marks the sibling that is the alias.
 */
import type { ArgSpec, CommandSpec, FlagSpec } from "./Describe.ts"
import { examples } from "./Examples.ts"
import { type Verb, verbs } from "./Verbs.ts"

export interface Style {
  readonly width: number
  readonly color: boolean
}

/** The style of help written to our stdout: its width on a terminal (else 80), colour only there. */
export const terminalStyle = (noColor: boolean): Style => {
  const tty = process.stdout.isTTY === true
  const columns = tty ? process.stdout.columns : undefined
  return {
    width: columns !== undefined && columns >= 40 ? Math.min(columns, 120) : 80,
    color: tty && !noColor && (process.env.NO_COLOR ?? "") === ""
  }
}

const plain: Style = { width: 80, color: false }

const heading = (text: string, style: Style) => (style.color ? `\x1b[1m${text}\x1b[22m` : text)

/** Words of `text` in lines of at most `width` columns; a word longer than a line stands alone. */
const wrapWords = (text: string, width: number): Array<string> => {
  const lines: Array<string> = []
  let line = ""
  for (const word of text.split(/\s+/).filter((w) => w.length > 0)) {
    if (line.length === 0) line = word
    else if (line.length + 1 + word.length <= width) line += ` ${word}`
    else {
      lines.push(line)
      line = word
    }
  }
  if (line.length > 0) lines.push(line)
  return lines
}

/** `left` then `text` at column `column`, continued with a hanging indent at that column. */
const hanging = (left: string, text: string, column: number, width: number): Array<string> => {
  const room = Math.max(20, width - column)
  const lines = wrapWords(text, room)
  if (lines.length === 0) return [left.trimEnd()]
  if (left.length + 2 > column) {
    return [left, ...lines.map((line) => `${" ".repeat(column)}${line}`)]
  }
  return [
    `${left.padEnd(column)}${lines[0]}`,
    ...lines.slice(1).map((line) => `${" ".repeat(column)}${line}`)
  ]
}

/** A paragraph wrapped at `width`, every line indented by `indent`. */
const paragraph = (text: string, width: number, indent = 0): Array<string> =>
  wrapWords(text, Math.max(20, width - indent)).map((line) => `${" ".repeat(indent)}${line}`)

// ---------- descriptions ----------

interface Described {
  readonly text: string
  /** Siblings that are this command under another name. */
  readonly aliases: ReadonlyArray<string>
  /** The sibling this command is an alias of. */
  readonly aliasOf: string | undefined
}

const describe = (description: string): Described => {
  const aliases = /\s*\(alias(?:es)?: ([^)]*)\)/.exec(description)
  const aliasOf = /\s*\(alias of ([^)]*)\)/.exec(description)
  const text = description.replace(/\s*\(alias(?:es)?: [^)]*\)/, "").replace(/\s*\(alias of [^)]*\)/, "")
  return {
    text,
    aliases: aliases?.[1]?.split(/,\s*/).filter((a) => a.length > 0) ?? [],
    aliasOf: aliasOf?.[1]?.trim()
  }
}

const sentence = (text: string) => (text.length === 0 ? text : `${text[0]!.toUpperCase()}${text.slice(1)}`)

/** A group's subcommands once each (aliases folded into the command they name), with all their names. */
export const visibleSubcommands = (
  spec: CommandSpec
): Array<{ readonly spec: CommandSpec; readonly names: ReadonlyArray<string> }> => {
  const children = spec.subcommands
  const names = new Set(children.map((c) => c.name))
  const hidden = new Set<string>()
  const extra = new Map<string, Array<string>>()
  for (const child of children) {
    const d = describe(child.description)
    for (const alias of d.aliases) {
      if (names.has(alias)) {
        hidden.add(alias)
        extra.set(child.name, [...(extra.get(child.name) ?? []), alias])
      }
    }
    if (d.aliasOf !== undefined && names.has(d.aliasOf) && !hidden.has(d.aliasOf)) {
      hidden.add(child.name)
      extra.set(d.aliasOf, [...(extra.get(d.aliasOf) ?? []), child.name])
    }
  }
  return children.filter((c) => !hidden.has(c.name)).map((c) => ({
    spec: c,
    names: [c.name, ...new Set(extra.get(c.name) ?? [])]
  }))
}

// ---------- flags ----------

/** Flags of commands with many of them are shown in these groups, in this order. */
const flagGroups: ReadonlyArray<readonly [string, ReadonlyArray<string>]> = [
  [
    "Workspace",
    [
      "--name",
      "--image",
      "--file",
      "--dry-run",
      "--hostname",
      "--entrypoint",
      "--restart",
      "--keep",
      "--rm",
      "--refuse-devices",
      "--ttl"
    ]
  ],
  ["Resources", [
    "--profile",
    "--memory",
    "--cpus",
    "--size-mib",
    "--boot-timeout",
    "--cold",
    "--constraint"
  ]],
  [
    "Network",
    [
      "--network",
      "--publish",
      "--egress",
      "--egress-allow",
      "--egress-lock-allowlist",
      "--egress-max-conns",
      "--egress-max-total-bytes",
      "--egress-max-bps",
      "--egress-policy",
      "--egress-passthrough",
      "--cred-swap",
      "--egress-swap-config",
      "--model",
      "--model-mediation",
      "--model-policy-file"
    ]
  ],
  ["Storage and secrets", ["--volume", "--secret", "--broker"]],
  ["Command", ["--exec", "--setup", "--env", "--cwd", "--user", "--timeout", "--stdin"]],
  ["Output", ["--output", "--stream", "--stdout-limit", "--stderr-limit"]]
]

/** A command with more flags than this shows them grouped. */
const groupAbove = 8

const valueText = (flag: FlagSpec): string | undefined => {
  if (flag.placeholder === undefined) return undefined
  if (flag.kind === "choice" && flag.placeholder === flag.choices.join("|") && flag.placeholder.length > 20) {
    return flag.name.replace(/^-+/, "").toUpperCase().replace(/-/g, "_")
  }
  return flag.placeholder
}

/** `-e, --env KEY=VALUE`: the short alias first, then the long name and its value. */
export const flagSynopsis = (flag: FlagSpec): string => {
  const all = [flag.name, ...flag.aliases]
  const short = all.filter((n) => /^-[^-]$/.test(n))
  const long = all.filter((n) => !/^-[^-]$/.test(n))
  const value = valueText(flag)
  return `${[...short, ...long].join(", ")}${value !== undefined ? ` ${value}` : ""}`
}

/** The description with what the parser knows added: choices, default, repeatable, required. */
export const flagDescription = (flag: FlagSpec): string => {
  const notes: Array<string> = []
  const text = flag.description
  if (flag.kind === "choice" && valueText(flag) !== flag.placeholder) {
    const missing = flag.choices.filter((c) => !text.includes(c))
    if (missing.length > 0) notes.push(`one of: ${flag.choices.join(", ")}`)
  }
  if (flag.defaultValue !== undefined && !/default/i.test(text)) notes.push(`default ${flag.defaultValue}`)
  if (flag.repeated && !/repeat/i.test(text)) notes.push("repeatable")
  if (flag.required) notes.push("required")
  const base = text.length > 0 ? text : "(no description)"
  return notes.length > 0 ? `${base} (${notes.join("; ")})` : base
}

const groupFlags = (flags: ReadonlyArray<FlagSpec>): Array<readonly [string, ReadonlyArray<FlagSpec>]> => {
  if (flags.length <= groupAbove) return [["Flags", flags]]
  const placed = new Set<FlagSpec>()
  const groups: Array<readonly [string, ReadonlyArray<FlagSpec>]> = []
  for (const [title, names] of flagGroups) {
    const members = flags.filter((f) => names.includes(f.name))
    for (const member of members) placed.add(member)
    if (members.length > 0) groups.push([title, members])
  }
  const rest = flags.filter((f) => !placed.has(f))
  if (rest.length > 0) groups.push(["Other flags", rest])
  return groups
}

// ---------- usage ----------

const argUsage = (arg: ArgSpec): string => {
  const many = arg.max > 1 ? "..." : ""
  return arg.min === 0 ? `[${arg.name}${many}]` : `${arg.name}${many}`
}

const verbOf = (path: ReadonlyArray<string>): Verb | undefined =>
  path.length === 1 ? verbs.find((v) => v.name === path[0]) : undefined

/** `microagent run [flags] [IMAGE] [--] [CMD [ARG...]]`, from the command's flags and arguments. */
export const usageLine = (path: ReadonlyArray<string>, spec: CommandSpec): string => {
  const verb = verbOf(path)
  if (verb?.usage !== undefined) return verb.usage
  const words = ["microagent", ...path]
  if (spec.subcommands.length > 0) {
    return [...words, ...(spec.flags.length > 0 ? ["[flags]"] : []), "COMMAND"].join(" ")
  }
  const required = spec.flags.filter((f) => f.required)
  for (const flag of required) words.push(`${flag.name}${flag.placeholder ? ` ${valueText(flag)}` : ""}`)
  if (spec.flags.length > required.length) words.push("[flags]")
  for (const arg of spec.args) words.push(argUsage(arg))
  if (verb?.guestArgs !== undefined) words.push(verb.guestArgs)
  return words.join(" ")
}

const globalFlagsLine = "Global flags: --json --state-dir --backend --cluster … (`microagent help`)"

// ---------- command help ----------

const aliasesOf = (path: ReadonlyArray<string>, spec: CommandSpec, parent: CommandSpec | undefined) => {
  const verb = verbOf(path)
  if (verb !== undefined) return verb.aliases ?? []
  if (parent === undefined) return []
  return visibleSubcommands(parent).find((c) => c.names.includes(spec.name))?.names.filter((n) =>
    n !== spec.name
  ) ?? []
}

const descriptionOf = (path: ReadonlyArray<string>, spec: CommandSpec): string => {
  const text = describe(spec.description).text
  if (text.length > 0) return sentence(text)
  return sentence(verbOf(path)?.summary ?? "")
}

/**
 * Where descriptions start: after the longest left part that fits (up to 24 columns); longer ones
 * (`--egress-max-total-bytes BYTES`) put their description on the next line.
 */
const columnFor = (lefts: ReadonlyArray<string>): number =>
  Math.max(12, ...lefts.map((left) => left.length).filter((n) => n <= 24).map((n) => n + 4))

const section = (title: string, body: ReadonlyArray<string>, style: Style): Array<string> =>
  body.length === 0 ? [] : ["", heading(`${title}:`, style), ...body]

/** The help of one command (a group's is `groupHelp`). */
export const commandHelp = (
  path: ReadonlyArray<string>,
  spec: CommandSpec,
  parent: CommandSpec | undefined,
  style: Style = plain
): string => {
  if (spec.subcommands.length > 0) return groupHelp(path, spec, style)
  const lines: Array<string> = [
    `${heading("Usage:", style)} ${usageLine(path, spec)}`,
    "",
    ...paragraph(descriptionOf(path, spec), style.width)
  ]
  const aliases = aliasesOf(path, spec, parent)
  if (aliases.length > 0) lines.push(...paragraph(`Aliases: ${aliases.join(", ")}`, style.width))
  const described = spec.args.filter((a) => a.description.length > 0)
  const column = columnFor([...spec.flags.map(flagSynopsis), ...described.map((a) => a.name)])
  lines.push(...section(
    "Arguments",
    described.flatMap((a) => hanging(`  ${a.name}`, a.description, column, style.width)),
    style
  ))
  for (const [title, flags] of groupFlags(spec.flags)) {
    lines.push(...section(
      title,
      flags.flatMap((f) => hanging(`  ${flagSynopsis(f)}`, flagDescription(f), column, style.width)),
      style
    ))
  }
  lines.push(...section("Examples", (examples[path.join(" ")] ?? []).map((e) => `  ${e}`), style))
  lines.push("", ...paragraph(globalFlagsLine, style.width))
  return `${lines.join("\n")}\n`
}

/** The help of a group of subcommands (`image`, `volume`, …): its commands, one line each. */
export const groupHelp = (path: ReadonlyArray<string>, spec: CommandSpec, style: Style = plain): string => {
  const children = visibleSubcommands(spec)
  const column = Math.min(24, Math.max(...children.map((c) => c.names.join(", ").length + 4), 10))
  const lines: Array<string> = [
    `${heading("Usage:", style)} ${usageLine(path, spec)}`,
    "",
    ...paragraph(descriptionOf(path, spec), style.width)
  ]
  const aliases = verbOf(path)?.aliases ?? []
  if (aliases.length > 0) lines.push(...paragraph(`Aliases: ${aliases.join(", ")}`, style.width))
  lines.push(...section(
    "Commands",
    children.flatMap((c) =>
      hanging(`  ${c.names.join(", ")}`, describe(c.spec.description).text, column, style.width)
    ),
    style
  ))
  if (spec.flags.length > 0) {
    lines.push(...section(
      "Flags",
      spec.flags.flatMap((f) =>
        hanging(
          `  ${flagSynopsis(f)}`,
          flagDescription(f),
          columnFor(spec.flags.map(flagSynopsis)),
          style.width
        )
      ),
      style
    ))
  }
  lines.push(...section("Examples", (examples[path.join(" ")] ?? []).map((e) => `  ${e}`), style))
  lines.push(
    "",
    ...paragraph(`Run \`microagent ${path.join(" ")} COMMAND --help\` for a command's flags.`, style.width)
  )
  return `${lines.join("\n")}\n`
}

// ---------- the command list ----------

const verbGroups = [
  "Getting started",
  "Run",
  "Lifecycle",
  "Observe",
  "Resources",
  "Maintenance",
  "Misc"
] as const

/** `microagent help`: the commands by group, with the global flags. */
export const topLevelHelp = (version: string, style: Style = plain): string => {
  const column = 14
  const lines = [
    `microagent ${version} — AI-agent workspaces in microVMs, booted from OCI images`,
    "",
    `${heading("Usage:", style)} microagent [global flags] COMMAND [flags] [args]`
  ]
  for (const group of verbGroups) {
    const members = verbs.filter((v) => v.group === group)
    if (members.length === 0) continue
    lines.push("", heading(`${group}:`, style))
    for (const verb of members) {
      const aliases = verb.aliases?.length ? ` (alias: ${verb.aliases.join(", ")})` : ""
      lines.push(...hanging(`  ${verb.name}`, `${verb.summary}${aliases}`, column, style.width))
    }
  }
  lines.push(
    "",
    heading("Global flags (before or after the command):", style),
    ...hanging(
      "  --json, --output json|text",
      "output format (default: text on a terminal, JSON otherwise)",
      31,
      style.width
    ),
    ...hanging(
      "  --state-dir DIR",
      "state directory (default: $MICROAGENT_HOME or ~/.microagent)",
      31,
      style.width
    ),
    ...hanging(
      "  --backend qemu|fake",
      "backend for new workspaces (default: $MICROAGENT_BACKEND or qemu)",
      31,
      style.width
    ),
    ...hanging(
      "  --cluster URL",
      "work through a cluster: its PostgreSQL URL (also $MICROAGENT_CLUSTER; docs/cluster.md)",
      31,
      style.width
    ),
    ...hanging("  --no-color", "no colour (also NO_COLOR)", 31, style.width),
    "",
    ...paragraph(
      "`microagent COMMAND --help` (or `microagent help COMMAND`) shows a command's flags and examples; `microagent help all` lists every command, subcommands included.",
      style.width
    )
  )
  return `${lines.join("\n")}\n`
}

/** Every command path with its spec, depth first, subcommands after their group. */
export const allCommands = (
  specs: ReadonlyArray<CommandSpec>
): Array<
  { readonly path: ReadonlyArray<string>; readonly spec: CommandSpec; readonly parent?: CommandSpec }
> => {
  const out: Array<{ path: ReadonlyArray<string>; spec: CommandSpec; parent?: CommandSpec }> = []
  const walk = (spec: CommandSpec, path: ReadonlyArray<string>, parent: CommandSpec | undefined) => {
    out.push(parent === undefined ? { path, spec } : { path, spec, parent })
    for (const child of spec.subcommands) walk(child, [...path, child.name], spec)
  }
  for (const verb of verbs) {
    const spec = specs.find((s) => s.name === verb.name)
    if (spec !== undefined) walk(spec, [verb.name], undefined)
  }
  for (const spec of specs) {
    if (!verbs.some((v) => v.name === spec.name)) walk(spec, [spec.name], undefined)
  }
  return out
}

/** `microagent help all`: every command and subcommand, one line each. */
export const allCommandsHelp = (specs: ReadonlyArray<CommandSpec>, style: Style = plain): string => {
  const rows: Array<{ readonly name: string; readonly text: string }> = []
  const walk = (path: ReadonlyArray<string>, spec: CommandSpec, aliases: ReadonlyArray<string>) => {
    const text = describe(spec.description).text || verbOf(path)?.summary || ""
    rows.push({
      name: path.join(" "),
      text: aliases.length > 0 ? `${text} (alias: ${aliases.join(", ")})` : text
    })
    for (const child of visibleSubcommands(spec)) {
      walk([...path, child.spec.name], child.spec, child.names.slice(1))
    }
  }
  for (const { path, spec } of allCommands(specs).filter((c) => c.path.length === 1)) {
    walk(path, spec, verbOf(path)?.aliases ?? [])
  }
  const withBuiltins = [
    ...rows,
    ...verbs.filter((v) => !rows.some((r) => r.name === v.name)).map((v) => ({
      name: v.name,
      text: v.summary
    }))
  ]
  const column = Math.min(26, Math.max(...withBuiltins.map((r) => r.name.length + 4)))
  return `${
    [
      heading("All commands:", style),
      ...withBuiltins.flatMap((r) => hanging(`  ${r.name}`, r.text, column, style.width))
    ].join("\n")
  }\n`
}

// ---------- docs/cli.md ----------

const mdCell = (text: string) => text.replace(/\|/g, "\\|")

/** The generated reference block of one command (and its subcommands) for docs/cli.md. */
export const markdownReference = (path: ReadonlyArray<string>, spec: CommandSpec): string => {
  const out: Array<string> = []
  const one = (p: ReadonlyArray<string>, s: CommandSpec, level: string, parent: CommandSpec | undefined) => {
    if (level !== "") out.push(`${level} \`${p.join(" ")}\``, "")
    out.push(`\`${usageLine(p, s)}\``, "", descriptionOf(p, s).replace(/([^.])$/, "$1."))
    const aliases = aliasesOf(p, s, parent)
    if (aliases.length > 0) out.push("", `Aliases: ${aliases.map((a) => `\`${a}\``).join(", ")}.`)
    if (s.subcommands.length > 0) {
      out.push("", "| command | description |", "|---|---|")
      for (const child of visibleSubcommands(s)) {
        out.push(
          `| ${child.names.map((n) => `\`${mdCell(n)}\``).join(", ")} | ${
            mdCell(describe(child.spec.description).text)
          } |`
        )
      }
    }
    const described = s.args.filter((a) => a.description.length > 0)
    if (described.length > 0) {
      out.push("", "| argument | description |", "|---|---|")
      for (const a of described) out.push(`| \`${mdCell(argUsage(a))}\` | ${mdCell(a.description)} |`)
    }
    if (s.flags.length > 0) {
      const groups = groupFlags(s.flags)
      out.push("", "| flag | description |", "|---|---|")
      for (const [title, flags] of groups) {
        if (groups.length > 1) out.push(`| **${title}** | |`)
        for (const f of flags) out.push(`| \`${mdCell(flagSynopsis(f))}\` | ${mdCell(flagDescription(f))} |`)
      }
    }
    const shown = examples[p.join(" ")] ?? []
    if (shown.length > 0) out.push("", "```sh", ...shown, "```")
  }
  one(path, spec, "", undefined)
  for (const child of visibleSubcommands(spec)) {
    out.push("")
    one([...path, child.spec.name], child.spec, "####", spec)
  }
  return out.join("\n")
}

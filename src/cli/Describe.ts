/**
 * The command tree as plain data, read from @effect/cli's descriptors: each command's name,
 * description, flags (names, aliases, value placeholder, type, default, repeatable) and positional
 * arguments. Help, the CLI reference and the command-line checks all read this one model, so a flag
 * added to a command's `Options` appears everywhere without further work.
 *
 * @effect/cli exposes its descriptors' shapes only through their `_tag`ged internal structure (stable
 * across the 0.x line this project pins); this module is the single place that reads it.
 */
import type { Command } from "@effect/cli"

export type ValueKind = "bool" | "text" | "integer" | "float" | "choice" | "path" | "date"

export interface FlagSpec {
  /** The long form, `--env` (or the short form when the flag has only one letter). */
  readonly name: string
  /** Other spellings: `-e`, `--arch`. */
  readonly aliases: ReadonlyArray<string>
  readonly kind: ValueKind
  /** What the value looks like in help (`KEY=VALUE`, `N`, `tiny|small`); undefined for a switch. */
  readonly placeholder: string | undefined
  readonly choices: ReadonlyArray<string>
  /** For a path: what it must name, and whether it must exist already. */
  readonly path?: { readonly type: "file" | "directory" | "either"; readonly exists: "yes" | "no" | "either" }
  readonly description: string
  readonly repeated: boolean
  readonly required: boolean
  /** A default the parser fills in itself (descriptions state the others). */
  readonly defaultValue: string | undefined
}

export interface ArgSpec {
  /** As written in usage: `IMAGE`, `NAME=SOURCE`. */
  readonly name: string
  readonly kind: ValueKind
  readonly choices: ReadonlyArray<string>
  readonly description: string
  readonly min: number
  readonly max: number
}

export interface CommandSpec {
  readonly name: string
  readonly description: string
  readonly flags: ReadonlyArray<FlagSpec>
  readonly args: ReadonlyArray<ArgSpec>
  readonly subcommands: ReadonlyArray<CommandSpec>
}

// The internal shapes read below (see @effect/cli's internal/{options,args,commandDescriptor,primitive,helpDoc}.js).
interface Node {
  readonly _tag: string
  readonly [key: string]: any
}

const spanText = (span: Node | undefined): string => {
  if (span === undefined) return ""
  switch (span._tag) {
    case "Text":
    case "URI":
      return String(span.value)
    case "Sequence":
      return spanText(span.left) + spanText(span.right)
    default:
      return spanText(span.value)
  }
}

/** A HelpDoc's paragraphs as one line of text. */
export const docText = (doc: Node | undefined): string => {
  if (doc === undefined) return ""
  switch (doc._tag) {
    case "Paragraph":
    case "Header":
      return spanText(doc.value)
    case "Sequence":
      return [docText(doc.left), docText(doc.right)].filter((s) => s.length > 0).join(" ")
    case "Enumeration":
      return (doc.elements as Array<Node>).map(docText).join(" ")
    case "DescriptionList":
      return (doc.definitions as Array<[Node, Node]>).map(([span, d]) => `${spanText(span)} ${docText(d)}`)
        .join(
          " "
        )
    default:
      return ""
  }
}

const kindOf = (primitive: Node): ValueKind => {
  switch (primitive._tag) {
    case "Bool":
      return "bool"
    case "Choice":
      return "choice"
    case "Integer":
      return "integer"
    case "Float":
      return "float"
    case "Path":
      return "path"
    case "DateTime":
      return "date"
    default:
      return "text"
  }
}

const choicesOf = (primitive: Node): ReadonlyArray<string> =>
  primitive._tag === "Choice"
    ? (primitive.alternatives as Array<[string, unknown]>).map(([name]) => name)
    : []

/** A placeholder for a value whose option names none: from its type, else from the flag's name. */
const placeholderFor = (
  kind: ValueKind,
  choices: ReadonlyArray<string>,
  name: string
): string | undefined => {
  switch (kind) {
    case "bool":
      return undefined
    case "choice":
      return choices.join("|")
    case "integer":
      return name.endsWith("mib") ? "MIB" : /timeout|seconds/.test(name) ? "SECONDS" : "N"
    case "float":
      return "NUMBER"
    case "path":
      return "PATH"
    case "date":
      return "DATE"
    case "text":
      return name.toUpperCase().replace(/-/g, "_")
  }
}

const dash = (name: string) => (name.length === 1 ? `-${name}` : `--${name}`)

const pseudoName = (single: Node): string | undefined =>
  single.pseudoName?._tag === "Some" ? String(single.pseudoName.value) : undefined

interface FlagMods {
  readonly repeated: boolean
  readonly required: boolean
  readonly defaultValue: string | undefined
}

const showDefault = (fallback: unknown): string | undefined => {
  if (fallback === undefined || fallback === null || fallback === false) return undefined
  if (typeof fallback === "object") {
    // Option.some(x) prints x; Option.none() and other values print nothing.
    const option = fallback as { _tag?: string; value?: unknown }
    return option._tag === "Some" ? showDefault(option.value) : undefined
  }
  if (Array.isArray(fallback)) return undefined
  return String(fallback)
}

const flagsOf = (options: Node, mods: FlagMods): Array<FlagSpec> => {
  switch (options._tag) {
    case "Single": {
      const kind = kindOf(options.primitiveType)
      const choices = choicesOf(options.primitiveType)
      const name = String(options.name)
      return [{
        name: dash(name),
        aliases: (options.aliases as Array<string>).map(dash),
        kind,
        placeholder: kind === "bool" ? undefined : pseudoName(options) ?? placeholderFor(kind, choices, name),
        choices,
        ...(kind === "path"
          ? { path: { type: options.primitiveType.pathType, exists: options.primitiveType.pathExists } }
          : {}),
        description: docText(options.description),
        repeated: mods.repeated,
        required: mods.required,
        defaultValue: mods.defaultValue
      }]
    }
    case "Map":
      return flagsOf(options.options, mods)
    case "Both":
    case "OrElse":
      return [
        ...flagsOf(options.left, options._tag === "OrElse" ? { ...mods, required: false } : mods),
        ...flagsOf(options.right, options._tag === "OrElse" ? { ...mods, required: false } : mods)
      ]
    case "Variadic": {
      const min = options.min?._tag === "Some" ? Number(options.min.value) : 0
      return flagsOf(options.argumentOption, { ...mods, repeated: true, required: mods.required && min > 0 })
    }
    case "KeyValueMap":
      return flagsOf(options.argumentOption, { ...mods, repeated: true }).map((flag) => ({
        ...flag,
        placeholder: "KEY=VALUE"
      }))
    case "WithDefault":
      return flagsOf(options.options, {
        ...mods,
        required: false,
        defaultValue: mods.defaultValue ?? showDefault(options.fallback)
      })
    case "WithFallback":
      return flagsOf(options.options, { ...mods, required: false })
    default:
      return []
  }
}

const argsOf = (args: Node, min: number, max: number): Array<ArgSpec> => {
  switch (args._tag) {
    case "Single": {
      const kind = kindOf(args.primitiveType)
      return [{
        name: String(args.name).replace(/^<|>$/g, "").toUpperCase(),
        kind,
        choices: choicesOf(args.primitiveType),
        description: docText(args.description),
        min,
        max
      }]
    }
    case "Map":
      return argsOf(args.args, min, max)
    case "Both":
      return [...argsOf(args.left, min, max), ...argsOf(args.right, min, max)]
    case "WithDefault":
    case "WithFallbackConfig":
      return argsOf(args.args, 0, max)
    case "Variadic": {
      const least = args.min?._tag === "Some" ? Number(args.min.value) : 0
      const most = args.max?._tag === "Some" ? Number(args.max.value) : Number.POSITIVE_INFINITY
      return argsOf(args.args, least * min, most)
    }
    default:
      return []
  }
}

const describeDescriptor = (descriptor: Node): CommandSpec => {
  switch (descriptor._tag) {
    case "Standard":
      return {
        name: String(descriptor.name),
        description: docText(descriptor.description),
        flags: flagsOf(descriptor.options, { repeated: false, required: true, defaultValue: undefined }),
        args: argsOf(descriptor.args, 1, 1),
        subcommands: []
      }
    case "Map":
      return describeDescriptor(descriptor.command)
    case "Subcommands":
      return {
        ...describeDescriptor(descriptor.parent),
        subcommands: (descriptor.children as Array<Node>).map(describeDescriptor)
      }
    default:
      return {
        name: String(descriptor.name ?? ""),
        description: "",
        flags: [],
        args: [],
        subcommands: []
      }
  }
}

/** The plain model of a command (any `Command.Command`: only its descriptor is read) and its subcommands. */
export const describeCommand = (
  command: Pick<Command.Command<string, never, never, unknown>, "descriptor">
): CommandSpec => describeDescriptor(command.descriptor as unknown as Node)

/** Every spelling of a flag. */
export const spellingsOf = (flag: FlagSpec): ReadonlyArray<string> => [flag.name, ...flag.aliases]

/**
 * The one-way module graph of src/ (docs/architecture.md): domain <- services <- layers; programs on
 * domain and services only (tags, never the layers that implement them); rpc, mcp, runtime, cli, the
 * Promise API and the package's entry modules on top, never importing each other in circles. `npm run
 * check` runs it.
 */
const folder = (name) => `^src/${name}/`
const top = "^src/[^/]+[.]ts$" // src/Microagent.ts, src/index.ts, src/Version.ts

/** A rule: modules under `from` import nothing under any of `to`. */
const forbid = (name, comment, from, to) => ({
  name,
  comment,
  severity: "error",
  from: { path: from },
  to: { path: to }
})

module.exports = {
  forbidden: [
    {
      name: "no-circular",
      comment: "modules import each other one way only",
      severity: "error",
      from: { path: "^src/" },
      to: { circular: true }
    },
    forbid(
      "domain-is-the-bottom",
      "domain/ holds schemas, errors and pure parsers shared by every surface: it imports nothing else of src/",
      folder("domain"),
      "^src/(?!domain/)"
    ),
    forbid(
      "services-on-domain",
      "services/ declares tags and interfaces over the domain only",
      folder("services"),
      "^src/(?!domain/|services/)"
    ),
    forbid(
      "layers-below-programs",
      "layers/ implement services: they never reach up to programs or the surfaces",
      folder("layers"),
      "^src/(?!domain/|services/|layers/)"
    ),
    forbid(
      "programs-below-surfaces",
      "programs/ are used by the surfaces, never the other way",
      folder("programs"),
      `^src/(rpc|mcp|cli|runtime|promise)/|${top}`
    ),
    forbid(
      "programs-use-services",
      "programs/ reach what they need through service tags; layers/ implement them and the composition provides them",
      folder("programs"),
      folder("layers")
    ),
    forbid(
      "rpc-below-runtime-and-clients",
      "the RPC group, client and handlers are what the runtime, the MCP server and the CLI build on",
      folder("rpc"),
      `^src/(mcp|cli|runtime|promise)/|${top}`
    ),
    forbid(
      "cluster-below-surfaces",
      "the cluster (runner and client) builds on the RPC API; the CLI and the entry modules use it",
      folder("cluster"),
      `^src/(mcp|cli|runtime|promise)/|${top}`
    ),
    forbid("mcp-below-cli", "the MCP server is a client of the RPC API", folder("mcp"), "^src/(cli|runtime|promise)/"),
    forbid("runtime-below-cli", "the runtime process is started by the CLI", folder("runtime"), "^src/(cli|mcp|promise)/"),
    forbid(
      "promise-over-the-library",
      "the Promise API is a thin layer over the programs, not over a surface",
      folder("promise"),
      "^src/(rpc|mcp|cli|runtime)/"
    ),
    forbid(
      "entry-modules-over-the-library",
      "the package's entry modules compose the library; the surfaces use them, not the reverse",
      top,
      "^src/(mcp|cli|runtime|promise)/"
    ),
    {
      name: "layer-internals-stay-inside",
      comment: "an implementation's internal/ modules are its own",
      severity: "error",
      from: { path: "^(src/layers/[^/]+)/" },
      to: { path: "^src/layers/[^/]+/internal/", pathNot: "^$1/internal/" }
    },
    forbid(
      "layer-internals-are-private",
      "nothing outside layers/ reaches into an implementation's internal/ modules",
      "^src/(?!layers/)",
      "^src/layers/[^/]+/internal/"
    ),
    {
      name: "not-to-unresolvable",
      comment: "every import resolves",
      severity: "error",
      from: {},
      to: { couldNotResolve: true }
    }
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    exclude: { path: "(^|/)node_modules/" },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: "tsconfig.json" },
    enhancedResolveOptions: { exportsFields: ["exports"], conditionNames: ["import", "require", "node", "default", "types"] }
  }
}

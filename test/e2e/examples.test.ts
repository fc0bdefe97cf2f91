/**
 * The examples as their users get them: the package is packed (`npm pack`, which builds it), installed
 * from the tarball into copies of examples/effect-host and examples/promise-host, type-checked by their
 * own `tsc`, and run on the fake backend and on QEMU. Dependencies come from the local npm cache
 * (`--prefer-offline`); better-sqlite3's native addon is taken from this checkout's build instead of
 * compiled again, when the versions match.
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { stopRuntime } from "../support/cli.ts"
import { qemuProcessesMentioning, repoRoot } from "../support/kernel.ts"
import { requireTool } from "../support/registry.ts"

const scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-examples-"))
let tarball: string

/** Runs a command asynchronously: a synchronous spawn would stall the test worker for minutes. */
const exec = (command: string, args: ReadonlyArray<string>, cwd: string, env: Record<string, string>) =>
  new Promise<string>((resolve, reject) => {
    NodeChild.execFile(command, [...args], {
      cwd,
      encoding: "utf8",
      env: { ...process.env, ...env },
      timeout: 900_000,
      maxBuffer: 64 * 1024 * 1024
    }, (error, stdout, stderr) =>
      error === null
        ? resolve(stdout)
        : reject(new Error(`${command} ${args.join(" ")} in ${cwd}: ${error.message}\n${stdout}\n${stderr}`)))
  })

const npm = (args: ReadonlyArray<string>, cwd: string, env: Record<string, string> = {}) =>
  exec("npm", args, cwd, { npm_config_update_notifier: "false", ...env })

/** The checkout's compiled better-sqlite3, if the installed copy is the same version. */
const reuseSqliteAddon = async (dir: string) => {
  const ours = NodePath.join(repoRoot, "node_modules/better-sqlite3")
  const theirs = NodePath.join(dir, "node_modules/better-sqlite3")
  const version = (d: string) =>
    JSON.parse(NodeFs.readFileSync(NodePath.join(d, "package.json"), "utf8")).version
  if (version(ours) === version(theirs) && NodeFs.existsSync(NodePath.join(ours, "build/Release"))) {
    NodeFs.cpSync(NodePath.join(ours, "build/Release"), NodePath.join(theirs, "build/Release"), {
      recursive: true
    })
  } else {
    await npm(["rebuild", "better-sqlite3"], dir)
  }
}

/**
 * A fresh copy of an example with the packed package installed, type-checked and compiled by its own
 * `npm run build` (its `tsc`). Its scripts (`npm start`, `npm test`…) are that build and then `node` on
 * one compiled file, so the tests run the compiled files directly instead of compiling again each time.
 */
const install = async (example: string) => {
  const dir = NodePath.join(scratch, example)
  NodeFs.cpSync(NodePath.join(repoRoot, "examples", example), dir, {
    recursive: true,
    filter: (source) => !/\/(node_modules|dist)$/.test(source)
  })
  // The examples serve no model: the embedded runner's llama.cpp binaries (an optional dependency of
  // several hundred MiB) are left out.
  await npm(
    [
      "install",
      "--prefer-offline",
      "--no-audit",
      "--no-fund",
      "--ignore-scripts",
      "--omit=optional",
      tarball
    ],
    dir
  )
  await reuseSqliteAddon(dir)
  await npm(["run", "--silent", "build"], dir)
  return dir
}

/** One of the example's scripts (`dist/<script>.js`) on `backend`, in a state directory of its own. */
const runOn = async (dir: string, script: string, backend: "fake" | "qemu") => {
  const home = NodeFs.mkdtempSync(NodePath.join(scratch, `home-${backend}-`))
  try {
    const env = { MICROAGENT_BACKEND: backend, MICROAGENT_HOME: home, MICROAGENT_RUNTIME_IDLE_SECONDS: "2" }
    return { home, stdout: await exec(process.execPath, [NodePath.join("dist", `${script}.js`)], dir, env) }
  } finally {
    stopRuntime(home) // the RPC client's example starts the state directory's runtime
  }
}

beforeAll(async () => {
  requireTool("npm", "npm")
  // The package's prepack is `build` then `build:lib`: the bundles and the guest agent were built by
  // `npm test` (and the bundles again by the global set-up), so only the library is compiled here.
  await npm(["run", "--silent", "build:lib"], repoRoot)
  await npm(["pack", "--ignore-scripts", "--pack-destination", scratch], repoRoot)
  tarball = NodePath.join(scratch, "microagent-0.1.0.tgz")
  assert.isTrue(NodeFs.existsSync(tarball))
}, 900_000)

afterAll(() => NodeFs.rmSync(scratch, { recursive: true, force: true }))

describe("the packed package", () => {
  it("exposes the public modules and hides the internals", () => {
    const listing = NodeChild.execFileSync("tar", ["-tzf", tarball], { encoding: "utf8" }).split("\n")
    for (
      const file of ["dist/index.js", "dist/index.d.ts", "dist/Microagent.d.ts", "dist/promise/index.d.ts"]
    ) {
      assert.include(listing, `package/${file}`)
    }
    // The first stages and the bundles they run (with the code cache).
    for (
      const file of [
        "microagent.mjs",
        "microagent-main.cjs",
        "microagent-runtime.mjs",
        "microagent-runtime.cjs"
      ]
    ) {
      assert.include(listing, `package/bin/${file}`)
    }
    assert.include(listing, "package/guest/build/microagent-agent")
    assert.notInclude(listing.join("\n"), "package/src/")
    const manifest = JSON.parse(
      NodeChild.execFileSync("tar", ["-xzOf", tarball, "package/package.json"], { encoding: "utf8" })
    )
    assert.isUndefined(manifest.private)
    assert.isNull(manifest.exports["./internal/*"])
  })
})

describe("examples/effect-host", () => {
  let dir: string
  beforeAll(async () => {
    dir = await install("effect-host")
  }, 900_000)

  it("type-checks and runs its own test on the fake backend", async () => {
    assert.match((await runOn(dir, "main.test", "fake")).stdout, /agentStep: ok/)
  })

  it("runs on the fake backend", async () => {
    assert.match((await runOn(dir, "main", "fake")).stdout, /hello from sh/)
  })

  it("drives the runtime through the RPC client, on the fake backend", async () => {
    const { home, stdout } = await runOn(dir, "client", "fake")
    assert.match(stdout, /3 hi\n1\n2\n3\nexit 0/)
    // The runtime it started is the package's own bundle.
    assert.match(NodeFs.readFileSync(NodePath.join(home, "run", "runtime.log"), "utf8"), /serving/)
  })

  it("runs on QEMU", async () => {
    requireTool("qemu-system-x86_64", "qemu-system-x86")
    const { home, stdout } = await runOn(dir, "main", "qemu")
    assert.match(stdout, /hello from sh/)
    assert.deepStrictEqual(qemuProcessesMentioning(home), [])
  })
})

describe("examples/promise-host", () => {
  let dir: string
  beforeAll(async () => {
    dir = await install("promise-host")
  }, 900_000)

  it("type-checks and runs on the fake backend", async () => {
    const { stdout } = await runOn(dir, "main", "fake")
    assert.match(stdout, /exit 3: hello from sh/)
    assert.match(stdout, /line 1\nline 2\nline 3\nstream exit 0/)
    assert.match(stdout, /read back: summarise this/)
  })

  it("runs on QEMU", async () => {
    requireTool("qemu-system-x86_64", "qemu-system-x86")
    const { home, stdout } = await runOn(dir, "main", "qemu")
    assert.match(stdout, /exit 3: hello from sh/)
    assert.match(stdout, /stream exit 0/)
    assert.match(stdout, /read back: summarise this/)
    assert.deepStrictEqual(qemuProcessesMentioning(home), [])
  })
})

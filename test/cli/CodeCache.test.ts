/**
 * The full CLI's code cache (src/layers/process/CodeCache.ts), through the built executable: written once,
 * private, used as it is while it matches, replaced when V8 rejects it or when it is not trusted, and
 * never in the way of a command.
 */
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { cliAsync } from "../support/cli.ts"

let scratch: string
let stateDir: string

beforeAll(() => {
  scratch = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-codecache-"))
  stateDir = NodePath.join(scratch, "state")
})

afterAll(() => NodeFs.rmSync(scratch, { recursive: true, force: true }))

/** `microagent help` with `XDG_CACHE_HOME` set to `cacheHome`: it must work whatever the cache is. */
const help = async (cacheHome: string, env: Record<string, string> = {}) => {
  const result = await cliAsync(["help"], { stateDir, env: { XDG_CACHE_HOME: cacheHome, ...env } })
  assert.strictEqual(result.code, 0, result.stderr)
  assert.include(result.stdout, "Usage: microagent")
  return result
}

const cacheFiles = (cacheHome: string) => {
  const dir = NodePath.join(cacheHome, "microagent")
  return NodeFs.existsSync(dir)
    ? NodeFs.readdirSync(dir).filter((name) => name.endsWith(".v8")).map((name) => NodePath.join(dir, name))
    : []
}

describe("the CLI's code cache", () => {
  it("is written by the first run, private, and left as it is by the runs that use it", async () => {
    const home = NodePath.join(scratch, "first")
    await help(home)
    const [file, ...more] = cacheFiles(home)
    assert.isDefined(file, "no cache written")
    assert.deepStrictEqual(more, [])
    assert.strictEqual(NodeFs.statSync(NodePath.dirname(file!)).mode & 0o777, 0o700)
    assert.strictEqual(NodeFs.statSync(file!).mode & 0o777, 0o600)
    assert.isAbove(NodeFs.statSync(file!).size, 100_000)
    const written = NodeFs.statSync(file!).mtimeMs
    await help(home)
    await help(home)
    assert.deepStrictEqual(cacheFiles(home), [file])
    assert.strictEqual(NodeFs.statSync(file!).mtimeMs, written, "an accepted cache was written again")
  })

  it("replaces a cache V8 rejects (a corrupt file) and one that others may write, and the command works", async () => {
    const home = NodePath.join(scratch, "bad")
    await help(home)
    const [file] = cacheFiles(home)
    NodeFs.writeFileSync(file!, Buffer.alloc(4096, 7))
    await help(home)
    assert.isAbove(NodeFs.statSync(file!).size, 100_000, "the corrupt cache was not replaced")
    // Writable by others: not used, and replaced by a private one.
    NodeFs.chmodSync(file!, 0o666)
    await help(home)
    assert.strictEqual(NodeFs.statSync(file!).mode & 0o777, 0o600)
  })

  it("is not used or written in a directory others may write, nor with MICROAGENT_CODE_CACHE=0", async () => {
    const open = NodePath.join(scratch, "open")
    NodeFs.mkdirSync(NodePath.join(open, "microagent"), { recursive: true })
    NodeFs.chmodSync(NodePath.join(open, "microagent"), 0o777)
    await help(open)
    assert.deepStrictEqual(cacheFiles(open), [])
    const off = NodePath.join(scratch, "off")
    await help(off, { MICROAGENT_CODE_CACHE: "0" })
    assert.deepStrictEqual(cacheFiles(off), [])
  })

  it("a cache location that cannot be made (a file in the way) costs nothing but the cache", async () => {
    const blocked = NodePath.join(scratch, "blocked")
    NodeFs.mkdirSync(blocked)
    NodeFs.writeFileSync(NodePath.join(blocked, "microagent"), "not a directory")
    await help(blocked)
    assert.strictEqual(NodeFs.readFileSync(NodePath.join(blocked, "microagent"), "utf8"), "not a directory")
  })
})

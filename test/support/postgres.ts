/**
 * A PostgreSQL server of a test's own: Debian's binaries, a data directory in the test's scratch
 * space, a free port on loopback, trust authentication for one user. As root it runs as the
 * `postgres` user (the server refuses root).
 */
import { execFileSync } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { freePort } from "./registry.ts"

const binDir = (): string => {
  const root = "/usr/lib/postgresql"
  const versions = NodeFs.existsSync(root)
    ? NodeFs.readdirSync(root).sort((a, b) => Number(b) - Number(a))
    : []
  for (const version of versions) {
    const dir = NodePath.join(root, version, "bin")
    if (NodeFs.existsSync(NodePath.join(dir, "initdb"))) return dir
  }
  throw new Error("PostgreSQL is required by this test but not installed: apt-get install postgresql")
}

export interface Postgres {
  readonly url: string
  readonly port: number
  readonly stop: () => void
  /** Stops the server and starts it again on the same data and port (`downMs` between). */
  readonly restart: (downMs?: number) => Promise<void>
  /** Runs one statement with psql on the cluster's database; its rows, a line each, fields `|`-separated. */
  readonly query: (statement: string) => ReadonlyArray<string>
}

/** The server's directory is its own (under the system's temporary directory, owned by its user); `stop` removes it. */
export const startPostgres = async (): Promise<Postgres> => {
  const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "microagent-pg-"))
  const bin = binDir()
  const asRoot = process.getuid?.() === 0
  const run = (tool: string, args: ReadonlyArray<string>) =>
    asRoot
      ? execFileSync("runuser", ["-u", "postgres", "--", NodePath.join(bin, tool), ...args], {
        stdio: "pipe"
      })
      : execFileSync(NodePath.join(bin, tool), args, { stdio: "pipe" })
  if (asRoot) execFileSync("chown", ["postgres", dir])
  const data = NodePath.join(dir, "data")
  run("initdb", ["-D", data, "-A", "trust", "-U", "microagent", "--no-sync"])
  const port = await freePort()
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200`
  const start = () =>
    run("pg_ctl", ["-D", data, "-o", options, "-l", NodePath.join(dir, "log"), "-w", "start"])
  const stop = () => {
    try {
      run("pg_ctl", ["-D", data, "-m", "fast", "-w", "stop"])
    } catch {
      // Not running.
    }
  }
  /** psql on `database`, its output as text. */
  const psql = (database: string, args: ReadonlyArray<string>) =>
    execFileSync(
      "psql",
      ["-h", "127.0.0.1", "-p", String(port), "-U", "microagent", "-d", database, ...args],
      {
        encoding: "utf8"
      }
    )
  start()
  psql("postgres", ["-qc", "CREATE DATABASE microagent"])
  return {
    url: `postgres://microagent@127.0.0.1:${port}/microagent`,
    port,
    stop: () => {
      stop()
      NodeFs.rmSync(dir, { recursive: true, force: true })
    },
    restart: async (downMs = 0) => {
      stop()
      await new Promise((resolve) => setTimeout(resolve, downMs))
      start()
    },
    query: (statement) => psql("microagent", ["-Atc", statement]).split("\n").filter((line) => line !== "")
  }
}

/**
 * Schema migrations of `state.db`, applied in order. Append only: never edit a released entry.
 * The version is SQLite's `user_version`; each migration runs in its own IMMEDIATE transaction, so
 * concurrent processes opening a fresh store apply it exactly once.
 */
export interface Migration {
  readonly name: string
  /** Statements separated by `;`, run in one IMMEDIATE transaction. */
  readonly sql: string
}

export const migrations: ReadonlyArray<Migration> = [
  {
    name: "initial",
    sql: `
      CREATE TABLE workspaces (
        name TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        record TEXT NOT NULL,
        version INTEGER NOT NULL,
        updated_at TEXT NOT NULL
      );
      CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        workspace TEXT NOT NULL,
        at TEXT NOT NULL,
        type TEXT NOT NULL,
        state TEXT,
        detail TEXT NOT NULL DEFAULT ''
      );
      CREATE INDEX events_by_workspace ON events (workspace, id);
      CREATE TABLE images (
        ref TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        record TEXT NOT NULL,
        created_at TEXT NOT NULL
      );
      CREATE INDEX images_by_digest ON images (digest);
      CREATE TABLE volumes (
        name TEXT PRIMARY KEY,
        record TEXT NOT NULL,
        attached_to TEXT,
        created_at TEXT NOT NULL
      );
      CREATE TABLE networks (
        name TEXT PRIMARY KEY,
        record TEXT NOT NULL,
        created_at TEXT NOT NULL
      );
      CREATE TABLE network_members (
        network TEXT NOT NULL,
        workspace TEXT NOT NULL,
        ip TEXT NOT NULL,
        PRIMARY KEY (network, workspace),
        UNIQUE (network, ip)
      );
    `
  },
  {
    name: "mcp idempotency keys",
    sql: `
      CREATE TABLE mcp_idempotency (
        tool TEXT NOT NULL,
        key TEXT NOT NULL,
        args_hash TEXT NOT NULL,
        envelope TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (tool, key)
      );
      CREATE INDEX mcp_idempotency_by_time ON mcp_idempotency (created_at);
    `
  },
  {
    name: "mcp idempotency claims",
    sql: `
      CREATE TABLE mcp_idempotency_claims (
        tool TEXT NOT NULL,
        key TEXT NOT NULL,
        args_hash TEXT NOT NULL,
        owner TEXT NOT NULL,
        pid INTEGER NOT NULL,
        start_time TEXT NOT NULL,
        claimed_at INTEGER NOT NULL,
        PRIMARY KEY (tool, key)
      );
    `
  },
  {
    name: "volume readers",
    sql: `
      CREATE TABLE volume_readers (
        volume TEXT NOT NULL,
        workspace TEXT NOT NULL,
        PRIMARY KEY (volume, workspace)
      );
      CREATE INDEX volume_readers_by_workspace ON volume_readers (workspace);
    `
  },
  {
    name: "models",
    sql: `
      CREATE TABLE models (
        ref TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        record TEXT NOT NULL,
        created_at TEXT NOT NULL
      );
      CREATE INDEX models_by_digest ON models (digest);
    `
  }
]

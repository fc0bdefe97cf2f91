/**
 * Guest memory of the qemu backend's saved and restored VMs: how a saved state's RAM comes back
 * (its memory file mapped copy-on-write, an own shared copy, or the stream), the VMM's shared memfd,
 * sparse copies, and the restored VM's console log.
 */
import { Effect } from "effect"
import * as NodeChild from "node:child_process"
import { randomBytes } from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Permanent } from "../../../../domain/Errors.ts"
import { consoleFileOf, memoryFileOf } from "../../../../services/Hypervisor.ts"
import { isAlive } from "../../../process/Processes.ts"
import type { GuestMemory } from "./args.ts"

export const memfd: GuestMemory = { _tag: "Memfd" }

/**
 * How a saved state's RAM is restored: its memory file mapped copy-on-write; else from the stream into
 * private memory; a stream from before the memory backend had a name (its RAM block is the machine's own,
 * `microvm.ram` or `pc.ram`) into QEMU's default RAM, as it was saved.
 */
export const guestMemoryFor = (stateFile: string): GuestMemory | undefined => {
  const memoryFile = memoryFileOf(stateFile)
  if (NodeFs.existsSync(memoryFile)) return { _tag: "MappedFile", path: memoryFile }
  return streamHasLegacyRam(stateFile) ? undefined : { _tag: "Anonymous" }
}

/** The RAM section, with its block names, opens the stream. */
const streamHasLegacyRam = (stateFile: string): boolean => {
  let fd: number | undefined
  try {
    fd = NodeFs.openSync(stateFile, "r")
    const head = Buffer.alloc(64 * 1024)
    const n = NodeFs.readSync(fd, head, 0, head.length, 0)
    const start = head.subarray(0, n)
    return start.includes("\x0bmicrovm.ram", 0, "latin1") || start.includes("\x06pc.ram", 0, "latin1")
  } catch {
    return false
  } finally {
    if (fd !== undefined) NodeFs.closeSync(fd)
  }
}

/** The `/proc` path of the VMM's shared guest-memory memfd, if its RAM is one. */
export const sharedMemoryOf = (pid: number): string | undefined => {
  const dir = `/proc/${pid}/fd`
  try {
    for (const fd of NodeFs.readdirSync(dir)) {
      const path = NodePath.join(dir, fd)
      try {
        const target = NodeFs.readlinkSync(path)
        if (
          target.startsWith("/memfd:memory-backend-memfd")
          || target.startsWith(`${sharedMemoryDir}/microagent-`)
        ) {
          return path
        }
      } catch {
        // Closed meanwhile.
      }
    }
  } catch {
    return undefined
  }
  return undefined
}

/** Where a restore's own copy of saved memory is made: a tmpfs, so that shared RAM stays in memory. */
const sharedMemoryDir = "/dev/shm"

/**
 * A restore's own copy of a saved memory file, shared like a booted VM's memfd (so that its captures
 * save memory as a file again). Without a writable tmpfs the file is mapped copy-on-write instead.
 * Copies left by processes that died before their VMM mapped them are removed first.
 */
export const ownCopyOf = (path: string): Effect.Effect<GuestMemory, Permanent> =>
  Effect.suspend(() => {
    try {
      NodeFs.accessSync(sharedMemoryDir, NodeFs.constants.W_OK)
    } catch {
      return Effect.succeed<GuestMemory>({ _tag: "MappedFile", path })
    }
    for (const entry of NodeFs.readdirSync(sharedMemoryDir)) {
      const owner = /^microagent-(\d+)-[0-9a-f]+\.mem$/.exec(entry)
      if (owner !== null && !isAlive(Number(owner[1]), undefined)) {
        NodeFs.rmSync(NodePath.join(sharedMemoryDir, entry), { force: true })
      }
    }
    const copy = NodePath.join(
      sharedMemoryDir,
      `microagent-${process.pid}-${randomBytes(6).toString("hex")}.mem`
    )
    return copyMemory(path, copy).pipe(Effect.as<GuestMemory>({ _tag: "SharedFile", path: copy }))
  })

/** A restored VM's console log begins with the saved VM's, then says when it was restored. */
export const seedConsole = (stateFile: string, consoleLog: string) =>
  Effect.sync(() => {
    try {
      const saved = NodeFs.readFileSync(consoleFileOf(stateFile))
      const tail = saved.length > 0 && saved[saved.length - 1] !== 0x0a ? "\n" : ""
      NodeFs.writeFileSync(
        consoleLog,
        Buffer.concat([saved, Buffer.from(`${tail}microagent: restored at ${new Date().toISOString()}\n`)]),
        { mode: 0o600 }
      )
    } catch {
      // A state saved without its console log: the log starts with what the restored VM prints.
    }
  })

/** A sparse copy (pages the guest never touched are holes), 0600 from the start. */
export const copyMemory = (from: string, to: string) =>
  Effect.async<void, Permanent>((resume) => {
    try {
      NodeFs.writeFileSync(to, "", { mode: 0o600 })
    } catch (cause) {
      return resume(Effect.fail(new Permanent({ message: `cannot create ${to}: ${String(cause)}` })))
    }
    NodeChild.execFile("cp", ["--sparse=always", from, to], (error, _stdout, stderr) => {
      if (error === null) return resume(Effect.void)
      NodeFs.rmSync(to, { force: true })
      resume(
        Effect.fail(
          new Permanent({
            message: `copying the guest memory to ${to} failed: ${String(stderr).trim() || error.message}`,
            remediation: "check the free space of the state directory's filesystem"
          })
        )
      )
    })
  })

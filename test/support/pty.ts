/**
 * Drives a command through a real pseudo-terminal (python3's pty module): the command sees a
 * terminal on stdin, stdout and stderr, as an interactive user's would. A script of steps waits for
 * output, types, resizes the terminal (the kernel signals SIGWINCH) and finally collects the exit code.
 */
import { spawn } from "node:child_process"
import { requireTool } from "./kernel.ts"

export type PtyStep =
  | { readonly expect: string; readonly timeoutMs?: number }
  | { readonly send: string }
  | { readonly resize: readonly [rows: number, cols: number] }
  | { readonly sleepMs: number }

export interface PtyResult {
  /** Everything the terminal showed. */
  readonly output: string
  readonly code: number
  /** The step that failed (an expectation that timed out), if any. */
  readonly failed?: string
}

const driver = String.raw`
import fcntl, json, os, pty, select, struct, sys, termios, time
spec = json.loads(sys.argv[1])
pid, fd = pty.fork()
if pid == 0:
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", spec["rows"], spec["cols"], 0, 0))
    os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
out = b""
mark = 0
failed = None
def pump(timeout):
    global out
    r, _, _ = select.select([fd], [], [], timeout)
    if not r:
        return True
    try:
        data = os.read(fd, 65536)
    except OSError:
        return False
    if not data:
        return False
    out += data
    return True
for step in spec["steps"]:
    if "expect" in step:
        want = step["expect"].encode()
        deadline = time.time() + step.get("timeoutMs", 60000) / 1000
        while out.find(want, mark) < 0:
            if time.time() > deadline or not pump(0.05):
                if out.find(want, mark) < 0:
                    failed = "expect " + step["expect"]
                break
        if failed:
            break
        mark = out.find(want, mark) + len(want)
    elif "send" in step:
        os.write(fd, step["send"].encode())
    elif "resize" in step:
        rows, cols = step["resize"]
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    elif "sleepMs" in step:
        end = time.time() + step["sleepMs"] / 1000
        while time.time() < end and pump(0.02):
            pass
if failed:
    os.kill(pid, 9)
deadline = time.time() + 30
while time.time() < deadline and pump(0.05):
    pass
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
json.dump({"output": out.decode("utf-8", "replace"), "code": code, **({"failed": failed} if failed else {})}, sys.stdout)
`

export const runInPty = (
  argv: ReadonlyArray<string>,
  steps: ReadonlyArray<PtyStep>,
  options: {
    readonly env?: Record<string, string | undefined>
    readonly rows?: number
    readonly cols?: number
  } = {}
): Promise<PtyResult> => {
  requireTool("python3", "python3")
  const spec = {
    argv,
    steps,
    rows: options.rows ?? 24,
    cols: options.cols ?? 80,
    env: Object.fromEntries(
      Object.entries({ ...process.env, ...options.env }).filter(([, v]) => v !== undefined)
    )
  }
  return new Promise((resolve, reject) => {
    const child = spawn("python3", ["-c", driver, JSON.stringify(spec)], {
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (d) => (stdout += d))
    child.stderr.on("data", (d) => (stderr += d))
    child.on("close", (code) => {
      if (code !== 0) return reject(new Error(`the pty driver failed (${code}): ${stderr}`))
      resolve(JSON.parse(stdout) as PtyResult)
    })
  })
}

/**
 * Images microagent can boot without any network: built on the host from Debian packages and imported
 * into the image store the first time they are asked for. `microagent.local/…` names them; nothing is
 * ever fetched for that host.
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { defaultImage } from "../../domain/ImageRef.ts"
import { type ImageSpec, type TarSpec, writeOciLayout } from "./OciWriter.ts"

export { defaultImage } from "../../domain/ImageRef.ts"

export class MissingBuiltinTool extends Error {}

/** The static busybox of Debian's busybox-static package. */
const findBusybox = (): string => {
  for (const path of ["/bin/busybox", "/usr/bin/busybox"]) {
    try {
      const description = NodeChild.execFileSync(path, ["--help"], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "pipe"]
      })
      if (description.startsWith("BusyBox")) return path
    } catch {
      // Not here, or not runnable.
    }
  }
  throw new MissingBuiltinTool("the built-in image needs busybox: apt-get install busybox-static")
}

/**
 * Layers of a busybox image from Debian's busybox-static: /bin/busybox, applet links, passwd and group,
 * and an empty /workspace.
 */
export const busyboxLayers = (): Array<Array<TarSpec>> => {
  const busybox = findBusybox()
  const applets = NodeChild.execFileSync(busybox, ["--list-full"], { encoding: "utf8" }).split("\n")
    .map((l) => l.trim()).filter((l) => l.length > 0 && l !== "bin/busybox")
  const dirs = new Set<string>([
    "bin",
    "sbin",
    "usr",
    "usr/bin",
    "usr/sbin",
    "etc",
    "root",
    "tmp",
    "proc",
    "sys",
    "dev",
    "run",
    "var",
    "var/tmp",
    "home",
    // The working directory of agent workspaces (`init`'s scaffold): there before the first start, so
    // that an input copied in offline (`cp FILE W:/workspace/…`) has its directory.
    "workspace"
  ])
  for (const applet of applets) dirs.add(NodePath.posix.dirname(applet))
  const base: Array<TarSpec> = [...dirs].sort().map((dir) => ({
    path: `${dir}/`,
    type: "dir" as const,
    mode: dir === "tmp" || dir === "var/tmp" ? 0o1777 : dir === "root" ? 0o700 : 0o755
  }))
  base.push({ path: "bin/busybox", content: NodeFs.readFileSync(busybox), mode: 0o755 })
  for (const applet of applets.sort()) base.push({ path: applet, type: "symlink", linkname: "/bin/busybox" })
  const etc: Array<TarSpec> = [
    {
      path: "etc/passwd",
      content: "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    },
    { path: "etc/group", content: "root:x:0:\nnogroup:x:65534:\n" },
    { path: "etc/shadow", content: "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n", mode: 0o640 },
    { path: "etc/hostname", content: "busybox\n" }
  ]
  return [base, etc]
}

export const busyboxConfig = {
  Env: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
  Cmd: ["/bin/sh"]
}

/** The host architecture in OCI terms. */
const architecture = process.arch === "arm64" ? "arm64" : "amd64"

const builtins: Record<string, () => ImageSpec> = {
  [defaultImage]: () => ({ layers: busyboxLayers(), architecture, config: busyboxConfig })
}

/** Whether a normalized reference names a built-in image. */
export const isBuiltinImage = (ref: string): boolean => ref in builtins

/** Writes the built-in image `ref` as an OCI layout in `directory`, tagged `latest`. */
export const writeBuiltinLayout = (ref: string, directory: string): void => {
  const spec = builtins[ref]
  if (spec === undefined) throw new Error(`${ref} is not a built-in image`)
  NodeFs.mkdirSync(NodePath.dirname(directory), { recursive: true })
  writeOciLayout(directory, [spec()], "latest")
}

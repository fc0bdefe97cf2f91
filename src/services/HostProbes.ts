/**
 * What `doctor` asks of the host beyond files: where a command is on the PATH, and whether named
 * networks can be plugged in here.
 */
import { Context } from "effect"

export interface HostProbesShape {
  /** The path of `command` on the PATH, if it is there. */
  readonly onPath: (command: string) => string | undefined
  /** Why named networks cannot work on this host (iproute2, /dev/net/tun, CAP_NET_ADMIN), if they cannot. */
  readonly fabricProblem: () => { readonly message: string; readonly remediation: string } | undefined
}

export class HostProbes extends Context.Tag("microagent/HostProbes")<HostProbes, HostProbesShape>() {}

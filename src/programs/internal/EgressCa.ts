/**
 * `--egress mitm`: the CA its interceptor minted for this start, installed in the guest before anything
 * of the workspace runs, so that its TLS clients trust the certificates the interceptor presents.
 *
 * The certificate goes to `/usr/local/share/ca-certificates/microagent-egress.crt` (kept by a later
 * `update-ca-certificates`) and is appended, between marker lines, to each system bundle the image has
 * (Debian/Ubuntu/Alpine `/etc/ssl/certs/ca-certificates.crt`, Fedora/RHEL `/etc/pki/tls/certs/ca-bundle.crt`,
 * `/etc/ssl/cert.pem`), replacing the block of an earlier start (whose CA's key is gone). An image with
 * no bundle gets `/etc/ssl/certs/ca-certificates.crt` holding the CA alone. Clients with a bundle of
 * their own are pointed at these by the exec environment (Requests.ts).
 */
import { Effect } from "effect"
import { Permanent } from "../../domain/Errors.ts"
import { ExecRequest } from "../../domain/Exec.ts"
import { GuestChannel } from "../../services/GuestChannel.ts"
import type { VmHandle } from "../../services/Hypervisor.ts"

/** Where the CA lands in every mitm guest (NODE_EXTRA_CA_CERTS points here). */
export const guestCaFile = "/usr/local/share/ca-certificates/microagent-egress.crt"
/** The bundle every mitm guest has once the CA is installed (REQUESTS_CA_BUNDLE and the like point here). */
export const guestBundle = "/etc/ssl/certs/ca-certificates.crt"

const script = `
set -e
pem="$1"; begin='# microagent egress CA (begin)'; end='# microagent egress CA (end)'
mkdir -p /usr/local/share/ca-certificates /etc/ssl/certs
printf '%s\\n' "$pem" > ${guestCaFile}
seen=' '; found=0
for b in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem; do
  [ -f "$b" ] || continue
  real=$(readlink -f "$b")
  found=1
  case "$seen" in *" $real "*) continue ;; esac
  seen="$seen$real "
  sed -i "/^$begin\\$/,/^$end\\$/d" "$real"
  printf '%s\\n%s\\n%s\\n' "$begin" "$pem" "$end" >> "$real"
done
[ "$found" = 1 ] || printf '%s\\n%s\\n%s\\n' "$begin" "$pem" "$end" > ${guestBundle}
`

export const installEgressCa = (name: string, handle: VmHandle, caPem: string | undefined) =>
  caPem === undefined ? Effect.void : Effect.scoped(Effect.gen(function*() {
    const channel = yield* GuestChannel
    const connection = yield* channel.connect(handle.channel)
    const result = yield* connection.exec(
      new ExecRequest({
        argv: ["/bin/sh", "-c", script, "microagent", caPem.trim()],
        user: "0",
        cwd: "/",
        timeoutSeconds: 30
      })
    )
    if (result.exitCode !== 0) {
      return yield* new Permanent({
        message: `workspace ${name}: installing the egress CA failed: ${
          result.stderr.trim() || `exit ${result.exitCode}`
        }`,
        remediation: "--egress mitm needs /bin/sh and a writable /etc in the image; --egress broker does not"
      })
    }
  })).pipe(
    Effect.mapError((error) =>
      error instanceof Permanent ? error : new Permanent({
        message: `workspace ${name}: installing the egress CA failed: ${error.message}`
      })
    )
  )

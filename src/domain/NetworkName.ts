/**
 * Names of named networks: what `--network` accepts besides a mode, checked the same by `network
 * create` and by a workspace's `--network` flags.
 */

/** What `--network` means besides a name. */
export const reservedNetworkNames: ReadonlyArray<string> = ["user", "isolated", "none", "host", "default"]

/** Network names end up in namespace names and /etc/hosts comments: short and plain. */
export const networkNameProblem = (name: string): string | undefined => {
  if (!/^[a-z0-9][a-z0-9_-]{0,31}$/.test(name)) {
    return `"${name}" must be 1-32 lowercase letters, digits, '_' and '-', starting with a letter or digit`
  }
  if (reservedNetworkNames.includes(name)) return `"${name}" is reserved (--network ${name} means a mode)`
  return undefined
}

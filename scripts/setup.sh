#!/usr/bin/env bash
# Installs what microagent needs on a fresh Debian or Ubuntu machine (run as root), then the npm
# dependencies (which also builds the guest agent and the CLI bundle). Safe to run again.
#   --test       also the packages the test tiers use
#   --no-npm     the system packages only (CI installs the npm dependencies itself, beside its checks)
set -euo pipefail
cd "$(dirname "$0")/.."

test_packages=false
npm_install=true
for arg in "$@"; do
  case "$arg" in
    --test) test_packages=true ;;
    --no-npm) npm_install=false ;;
    *) echo "setup.sh: unknown option $arg (--test, --no-npm)" >&2; exit 2 ;;
  esac
done

export DEBIAN_FRONTEND=noninteractive
packages=(
  # VMs: QEMU, the kernel extraction tools, ext4 images, the built-in busybox image
  qemu-system-x86 lz4 zstd xz-utils e2fsprogs busybox-static
  # Copy-on-write disks for forks and copies of snapshots (qemu-img)
  qemu-utils
  # Named networks: namespaces, bridges and taps
  iproute2
  # Egress mediation (the default): the rules inside each workspace's namespace
  iptables
  # The guest agent and the egress mediator: static C builds
  musl-tools build-essential
)
if [ "$test_packages" = true ]; then
  # The test tiers: a loopback OCI registry and image tools, fuzzing, networking helpers
  packages+=(docker-registry skopeo umoci apache2-utils openssl clang libclang-rt-14-dev socat passt mmdebstrap)
  # connect's tests drive the CLI through a real pseudo-terminal (python3's pty module)
  packages+=(python3)
  # the cluster tests start their own PostgreSQL
  packages+=(postgresql)
  # the completion scripts are loaded in each shell they are written for
  packages+=(zsh fish)
fi
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ "$npm_install" = true ] || exit 0

npm ci --no-audit --no-fund

# Put `microagent` on the PATH: a global link to this checkout (its bin is the bundle npm ci built).
# Without write access to npm's global prefix, `npx microagent` from the checkout works the same.
if [ -w "$(npm prefix -g)" ]; then
  npm link --ignore-scripts --no-audit --no-fund >/dev/null
  echo "microagent is on the PATH: $(command -v microagent || echo "$(npm prefix -g)/bin/microagent")"
else
  echo "npm's global prefix is not writable: use 'npx microagent' from this checkout, or 'sudo npm link'" >&2
fi

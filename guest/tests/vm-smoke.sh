#!/usr/bin/env bash
# Boots the agent as PID 1 in a QEMU microvm (TCG) and drives it over virtio-serial with the real
# TypeScript client. Not part of the fast tier: it needs a kernel and its virtio modules.
#   guest/tests/vm-smoke.sh VMLINUZ MODULES_DIR     (MODULES_DIR = .../lib/modules/<version>)
# Needs: qemu-system-x86, busybox-static, e2fsprogs, node. Prints "N passed, M failed".
set -euo pipefail
kernel=$1
moddir=$2
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
make -s -C "$repo/guest"

# initramfs: the agent as /init and the virtio modules, in load order
mkdir -p "$work/ir/lib/modules"
mods=(virtio/virtio virtio/virtio_ring virtio/virtio_mmio block/virtio_blk char/virtio_console)
mods+=(../net/core/failover net/net_failover net/virtio_net)
for m in "${mods[@]}"; do
  f=$(find "$moddir/kernel/drivers/$m.ko"* "$moddir/kernel/net/core/$(basename "$m").ko"* 2>/dev/null | head -1 || true)
  [ -n "$f" ] || { echo "module $m not found under $moddir"; exit 1; }
  cp "$f" "$work/ir/lib/modules/"
  basename "$f" >> "$work/ir/lib/modules/load.list"
done
cp "$repo/guest/build/microagent-agent" "$work/ir/init"
(cd "$work/ir" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > "$work/initrd.gz")

# root: busybox and the two accounts the checks use; a blank data disk
mkdir -p "$work/root/bin" "$work/root/etc" "$work/root/"{dev,proc,sys,tmp,run}
cp "$(command -v busybox)" "$work/root/bin/"
for a in sh cat echo hostname id ip stat stty test grep head sleep; do ln -s busybox "$work/root/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' > "$work/root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$work/root/etc/group"
mkfs.ext4 -q -F -d "$work/root" -E root_owner=0:0 "$work/root.ext4" 64M >/dev/null
mkfs.ext4 -q -F "$work/data.ext4" 16M >/dev/null

"$repo/node_modules/.bin/esbuild" "$repo/test/guest/vm-smoke.ts" --bundle --platform=node \
  --format=esm --log-level=error --outfile="$work/client.mjs"

tsc_khz=$(awk -F: '/cpu MHz/{printf "%d",$2*1000;exit}' /proc/cpuinfo)
boot() { # $1 = extra kernel parameters
  timeout 120 qemu-system-x86_64 -accel tcg -M microvm -m 256 -nodefaults -no-user-config -nographic \
    -serial stdio -no-reboot -kernel "$kernel" -initrd "$work/initrd.gz" \
    -drive id=d0,file="$work/root.ext4",format=raw,if=none -device virtio-blk-device,drive=d0 \
    -drive id=d1,file="$work/data.ext4",format=raw,if=none -device virtio-blk-device,drive=d1 \
    -netdev user,id=n0 -device virtio-net-device,netdev=n0 \
    -device virtio-serial-device -chardev socket,id=ch0,path="$work/agent.sock",server=on,wait=off \
    -device virtserialport,chardev=ch0,name=microagent.agent \
    -append "console=ttyS0 panic=-1 quiet tsc_early_khz=$tsc_khz $1"
}

passed=0 failed=0
boot "microagent.hostname=smoke microagent.ip=10.0.2.15/24 microagent.gateway=10.0.2.2 microagent.dns=10.0.2.3 microagent.hosts=peer=10.0.2.9 microagent.disks=vdb:/data:rw" \
  > "$work/console.log" 2>&1 &
qemu=$!
if node "$work/client.mjs" "$work/agent.sock" > "$work/client.log"; then :; fi
cat "$work/client.log"
passed=$((passed + $(grep -c '^ok' "$work/client.log" || true)))
failed=$((failed + $(grep -c '^FAIL' "$work/client.log" || true)))
if wait $qemu && grep -q "reboot: Power down" "$work/console.log"; then
  echo "ok   powered off cleanly"; passed=$((passed + 1))
else
  echo "FAIL power off"; failed=$((failed + 1)); cat "$work/console.log"
fi

# a fatal boot error: a clear console line, then power off (no panic loop)
rm -f "$work/agent.sock"
if boot "microagent.root=/dev/vdz" > "$work/fatal.log" 2>&1 && grep -q "FATAL: root device /dev/vdz" "$work/fatal.log" &&
  grep -q "reboot: Power down" "$work/fatal.log"; then
  echo "ok   fatal boot error powers off"; passed=$((passed + 1))
else
  echo "FAIL fatal boot error"; failed=$((failed + 1)); cat "$work/fatal.log"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

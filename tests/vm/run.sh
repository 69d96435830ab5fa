#!/bin/bash
# Boots the vivid test VM and prints its console: tests/vm/run.sh OUT_DIR RTCAM_BINARY
# KVM only where the CPU has it and /dev/kvm is usable; otherwise TCG (slower, same result).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1
"$here/prepare.sh" "$out" "$2" >&2

accel=tcg
cpu=max
if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -w /dev/kvm ]; then
    accel=kvm
    cpu=host
fi
echo "run.sh: booting with $accel" >&2
# The guest powers itself off; the timeout only catches a kernel that hangs.
exec timeout 210 qemu-system-x86_64 \
    -accel "$accel" -cpu "$cpu" -smp 2 -m 768 \
    -nographic -no-reboot -nodefaults -serial stdio -monitor none \
    -kernel "$out/vmlinuz" -initrd "$out/initramfs.cpio.gz" \
    -append "console=ttyS0 quiet loglevel=4 panic=-1 rdinit=/init"

#!/bin/bash
# Downloads and unpacks the Debian x86_64 kernel that linux-image-amd64 currently depends on (its
# ABI number drifts), once, into KERNEL_DIR: KERNEL_DIR/root holds the package's files with a
# modules.dep, KERNEL_DIR/ready the kernel version. Shared by the VMs the tests boot: the vivid
# camera VM (tests/vm/prepare.sh) and the lossy-link router (tests/vm/router/prepare.sh).
#
#   tests/vm/kernel.sh KERNEL_DIR
set -euo pipefail
kdir=$(realpath -m "$1")
[ -f "$kdir/ready" ] && exit 0
# Two tests may want the kernel at once on a fresh machine: one downloads, the other waits.
mkdir -p "$(dirname "$kdir")"
exec 9>"$kdir.lock"
flock 9
[ -f "$kdir/ready" ] && exit 0
rm -rf "$kdir" && mkdir -p "$kdir"
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$pkg" ] && [ "$(id -u)" = 0 ]; then
    # A fresh machine may have no package lists yet.
    apt-get update -qq >&2
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
fi
if [ -z "$pkg" ]; then
    echo "kernel.sh: apt-cache knows no linux-image-amd64; run apt-get update" >&2
    exit 1
fi
(cd "$kdir" && apt-get download "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
deb=$(ls "$kdir"/linux-image-*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || { echo "kernel.sh: could not download $pkg" >&2; exit 1; }
dpkg -x "$deb" "$kdir/root"
rm -f "$deb"
kver=$(ls "$kdir/root/lib/modules" | head -1)
# The package ships no modules.dep: build it so modprobe can resolve a module's dependencies.
depmod -b "$kdir/root" "$kver"
echo "$kver" > "$kdir/ready"

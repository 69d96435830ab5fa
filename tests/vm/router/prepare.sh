#!/bin/bash
# Builds the lossy-link router VM (tests/it/common/lossy.rs): Debian's x86_64 kernel, whose
# sch_netem the host kernel may lack, and a busybox initramfs with that module, `tc` with its
# libraries and delay distributions, and an init that forwards between its two NICs and runs
# the lines the host writes to its console.
#
#   tests/vm/router/prepare.sh OUT_DIR
#
# Writes OUT_DIR/vmlinuz and OUT_DIR/initramfs.cpio.gz; the kernel package is shared with the
# vivid VM (tests/vm/kernel.sh, cached in OUT_DIR/../kernel). Rebuilt only when a script is newer.
set -euo pipefail

out=$(realpath -m "$1")
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
exec 8>"$out.lock"
flock 8

kdir=$(dirname "$out")/kernel
"$here/../kernel.sh" "$kdir"
kver=$(cat "$kdir/ready")
cp -u "$kdir/root/boot/vmlinuz-$kver" "$out/vmlinuz"

initrd=$out/initramfs.cpio.gz
if [ -f "$initrd" ] && [ "$initrd" -nt "$here/init" ] && [ "$initrd" -nt "$0" ]; then
    exit 0
fi

root=$out/initramfs
rm -rf "$root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,modules,etc}
cp /bin/busybox "$root/bin/busybox"
cp "$here/init" "$root/init"
chmod +x "$root/init"

# The NIC driver (virtio-net over PCI) and sch_netem with what they need, in load order, once each.
: > "$root/modules/order"
for m in virtio_pci virtio_net sch_netem; do
    modprobe -d "$kdir/root" -S "$kver" --show-depends "$m"
done | while read -r cmd path _; do
    [ "$cmd" = insmod ] || continue
    name=$(basename "$path")
    case "$name" in *.xz|*.zst) base=${name%.*} ;; *) base=$name ;; esac
    grep -qx "$base" "$root/modules/order" && continue
    case "$name" in
        *.xz) xz -dc "$path" > "$root/modules/${name%.xz}"; name=${name%.xz} ;;
        *.zst) zstd -qdc "$path" > "$root/modules/${name%.zst}"; name=${name%.zst} ;;
        *) cp "$path" "$root/modules/$name" ;;
    esac
    echo "$name" >> "$root/modules/order"
done

# The host's tc (iproute2) with its libraries: busybox's tc knows no netem.
tc=$(command -v tc || echo /usr/sbin/tc)
[ -x "$tc" ] || { echo "router/prepare.sh: tc missing (package iproute2)" >&2; exit 1; }
mkdir -p "$root/usr/sbin" "$root/lib64"
cp -L "$tc" "$root/usr/sbin/tc"
ldd "$tc" | awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
[ -e "$root/lib64/ld-linux-x86-64.so.2" ] || cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
# The delay distribution tables (`delay 80ms 20ms distribution normal`).
for dir in /usr/lib/x86_64-linux-gnu/tc /usr/lib/tc /lib/tc; do
    if [ -d "$dir" ]; then
        mkdir -p "$root$dir"
        cp "$dir"/*.dist "$root$dir/" 2>/dev/null || true
    fi
done

(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$initrd.tmp"
mv "$initrd.tmp" "$initrd"
echo "router/prepare.sh: initramfs $(du -h "$initrd" | cut -f1) for kernel $kver" >&2

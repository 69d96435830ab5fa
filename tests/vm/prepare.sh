#!/bin/bash
# Builds what the vivid VM test boots: Debian's x86_64 kernel and a busybox initramfs holding
# the vivid modules, the rtcam binary under test with its shared libraries, the few GStreamer
# plugins its capture-and-encode pipeline uses, and tests/vm/guest.sh as the guest's test.
#
#   tests/vm/prepare.sh OUT_DIR RTCAM_BINARY
#
# Writes OUT_DIR/vmlinuz and OUT_DIR/initramfs.cpio.gz. The kernel package is downloaded and
# unpacked once and kept in OUT_DIR/kernel; the initramfs is rebuilt only when the binary or a
# guest script is newer than it, so a rerun costs seconds.
set -euo pipefail

out=$(realpath -m "$1")
rtcam=$(realpath "$2")
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"

# --- kernel: Debian's, shared with the lossy-link router VM (tests/vm/kernel.sh) ----------
kdir=$out/kernel
"$here/kernel.sh" "$kdir"
kver=$(cat "$kdir/ready")
cp -u "$kdir/root/boot/vmlinuz-$kver" "$out/vmlinuz"

# --- initramfs ---------------------------------------------------------------------------
initrd=$out/initramfs.cpio.gz
if [ -f "$initrd" ] && [ "$initrd" -nt "$rtcam" ] && [ "$initrd" -nt "$here/guest.sh" ] \
    && [ "$initrd" -nt "$here/init" ] && [ "$initrd" -nt "$0" ]; then
    exit 0
fi

root=$out/initramfs
rm -rf "$root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,modules,etc}

cp /bin/busybox "$root/bin/busybox"
cp "$here/init" "$root/init"
cp "$here/guest.sh" "$root/guest.sh"
chmod +x "$root/init" "$root/guest.sh"

# vivid and the modules it needs, in load order.
: > "$root/modules/order"
modprobe -d "$kdir/root" -S "$kver" --show-depends vivid | while read -r cmd path _; do
    [ "$cmd" = insmod ] || continue
    name=$(basename "$path")
    case "$name" in
        *.xz) xz -dc "$path" > "$root/modules/${name%.xz}"; name=${name%.xz} ;;
        *.zst) zstd -qdc "$path" > "$root/modules/${name%.zst}"; name=${name%.zst} ;;
        *) cp "$path" "$root/modules/$name" ;;
    esac
    echo "$name" >> "$root/modules/order"
done

# Copies a file and every shared library it needs to the same absolute paths in the guest.
copy_with_libs() {
    local f=$1
    mkdir -p "$root$(dirname "$f")"
    cp -L "$f" "$root$f"
    ldd "$f" | awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}' | while read -r lib; do
        if [ ! -e "$root$lib" ]; then
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        fi
    done
}

# The binary under test, without debug info (it is ~250 MB with it).
objcopy --strip-debug "$rtcam" "$root/bin/rtcam"
ldd "$rtcam" | awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
mkdir -p "$root/lib64"
[ -e "$root/lib64/ld-linux-x86-64.so.2" ] || cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"

# MQTT clients, to watch the agent's status and send it commands from inside the guest.
for tool in mosquitto_sub mosquitto_pub; do
    f=$(command -v "$tool" || true)
    if [ -z "$f" ]; then
        echo "prepare.sh: $tool missing (package mosquitto-clients; make test-deps installs it)" >&2
        exit 1
    fi
    copy_with_libs "$f"
done

# GStreamer plugins for appsrc → videoconvert → x264enc → h264parse → appsink.
gstdir=$(pkg-config --variable=pluginsdir gstreamer-1.0 2>/dev/null || echo /usr/lib/x86_64-linux-gnu/gstreamer-1.0)
for p in coreelements app videoconvertscale x264 videoparsersbad; do
    f=$gstdir/libgst$p.so
    if [ ! -f "$f" ]; then
        echo "prepare.sh: GStreamer plugin $f missing (make test-deps installs it)" >&2
        exit 1
    fi
    copy_with_libs "$f"
done
echo "$gstdir" > "$root/etc/gst-plugin-dir"

(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$initrd.tmp"
mv "$initrd.tmp" "$initrd"
echo "prepare.sh: initramfs $(du -h "$initrd" | cut -f1) for kernel $kver"

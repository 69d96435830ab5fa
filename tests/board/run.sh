#!/usr/bin/env bash
# The emulated-board test: rtcam, cross-built, captures from a camera on an arm64 board and
# encodes it, checked in qemu-system-aarch64 (full-system TCG; qemu-user cannot run GStreamer).
#
# The board: Debian's arm64 kernel, a busybox initramfs, the vivid virtual camera driver, the
# GStreamer libraries and plugins rtcam needs (from Debian's arm64/armhf .debs) and rtcam itself.
# The armv7 build runs on the same board as a 32-bit process (AArch32 compat), which exercises
# the 32-bit time_t V4L2 structures through the kernel's compat ioctls.
#
#   tests/board/run.sh [TARGET...]     default: both targets; BOARD_PROFILE=release for release builds
#
# For tests that need more of the board (tests/it/board_nat.rs), the environment can change it:
#   BOARD_NET=1            a network card behind qemu's user-mode NAT: the board is 10.0.2.15
#                          and reaches the host as 10.0.2.2; nothing on the host reaches it
#   BOARD_CONFIG=FILE      the guest's /etc/rtcam/rtcam.toml (default tests/board/rtcam.toml)
#   BOARD_CREDENTIALS=DIR  files rtcam finds in $CREDENTIALS_DIRECTORY, as under systemd
#   BOARD_GUEST="ARGS|MARKER", BOARD_CASE_TIMEOUT=SECONDS   what the guest runs (see below)
#
# Everything downloaded or built is cached under target/; a second run costs a cargo no-op,
# the initramfs and the boot.
set -euo pipefail
cd "$(dirname "$0")/../.."
targets=${*:-aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf}
profile=${BOARD_PROFILE:-board-test}
# What the guest runs and what proves frames came out, as "ARGS|MARKER": rtcam runs until
# MARKER shows in its output, then gets SIGTERM and must exit cleanly; a MARKER of "-" makes
# the exit status alone the verdict. With `rtcam check` this line becomes
#   guest='--config /etc/rtcam/rtcam.toml check --frames 30 --timeout 60|-'
guest='--config /etc/rtcam/rtcam.toml|first encoded frame from /dev/video0'
guest=${BOARD_GUEST:-$guest}
guest_args=${guest%|*} marker=${guest##*|}
case_timeout=${BOARD_CASE_TIMEOUT:-120}
config=${BOARD_CONFIG:-tests/board/rtcam.toml}

work=$PWD/target/board
initrd=$work/initramfs
rm -rf "$initrd"
mkdir -p "$initrd"/{bin,modules,etc/rtcam,usr/bin}
started=$SECONDS

# Kernel and busybox: Debian's arm64 kernel meta-package names today's ABI.
kernel_pkg=$(cross/debs.sh --depends arm64 target/cross/arm64 linux-image-arm64 | grep '^linux-image-' | head -1)
kver=${kernel_pkg#linux-image-}
cross/debs.sh --no-deps arm64 target/cross/arm64 "$kernel_pkg" busybox-static
kroot=$PWD/target/cross/arm64/root
[ -e "$kroot/lib/modules/$kver/modules.dep" ] || depmod -b "$kroot" "$kver"
cp "$kroot/bin/busybox" "$initrd/bin/busybox"
modules=vivid
[ -n "${BOARD_NET:-}" ] && modules="virtio_pci virtio_net vivid"
for module in $modules; do
	modprobe -d "$kroot" -S "$kver" --show-depends "$module" | awk '$1 == "insmod" { print $2 }'
done | awk '!seen[$0]++' | while read -r ko; do
	cp "$ko" "$initrd/modules/"
	# One capture node, nothing else vivid could emulate.
	case $(basename "$ko") in vivid.ko) args="n_devs=1 node_types=0x1" ;; *) args= ;; esac
	echo "$(basename "$ko") $args" >>"$initrd/modules.order"
done
cp tests/board/init "$initrd/init"
chmod +x "$initrd/init"
cp "$config" "$initrd/etc/rtcam/rtcam.toml"
credentials_env=
if [ -n "${BOARD_CREDENTIALS:-}" ]; then
	cp -r "$BOARD_CREDENTIALS" "$initrd/etc/rtcam/credentials"
	credentials_env="CREDENTIALS_DIRECTORY=/etc/rtcam/credentials"
fi
net=()
if [ -n "${BOARD_NET:-}" ]; then
	touch "$initrd/net"
	net=(-netdev user,id=net0 -device virtio-net-pci,netdev=net0)
fi

# add_elf ROOT TRIPLE FILE: copies the shared libraries FILE needs, and theirs, from ROOT.
add_elf() {
	local root=$1 triple=$2 file=$3 lib src
	for lib in $(readelf -d "$file" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
		[ -e "$initrd/lib/$triple/$lib" ] && continue
		src=
		for d in "$root/lib/$triple" "$root/usr/lib/$triple"; do
			[ -e "$d/$lib" ] && src=$d/$lib && break
		done
		if [ -z "$src" ]; then
			echo "board: $lib (needed by $file) is in none of the downloaded packages" >&2
			exit 1
		fi
		cp -L "$src" "$initrd/lib/$triple/$lib"
		add_elf "$root" "$triple" "$src"
	done
}

: >"$initrd/cases.sh"
for target in $targets; do
	case $target in
	aarch64-unknown-linux-gnu) arch=arm64 triple=aarch64-linux-gnu loader=ld-linux-aarch64.so.1 ;;
	armv7-unknown-linux-gnueabihf) arch=armhf triple=arm-linux-gnueabihf loader=ld-linux-armhf.so.3 ;;
	*) echo "board: unsupported target $target" >&2; exit 2 ;;
	esac
	cross/build.sh "$target" "$profile"
	# The runtime: GStreamer, its base and ugly plugins (x264enc) with their dependencies, and
	# from -bad only h264parse's package, not the hundreds of libraries the rest of -bad needs.
	cross/debs.sh "$arch" "target/cross/$arch" libgstreamer1.0-0 gstreamer1.0-plugins-base gstreamer1.0-plugins-ugly
	cross/debs.sh --no-deps "$arch" "target/cross/$arch" gstreamer1.0-plugins-bad libgstreamer-plugins-bad1.0-0
	root=$PWD/target/cross/$arch/root
	mkdir -p "$initrd/lib/$triple" "$initrd/usr/lib/$triple/gstreamer-1.0"
	cp -L "$root/lib/$loader" "$initrd/lib/$loader"
	bin=$initrd/usr/bin/rtcam-$arch
	cp "target/$target/$profile/rtcam" "$bin"
	add_elf "$root" "$triple" "$bin"
	for plugin in coreelements app videoconvertscale x264 videoparsersbad; do
		so=$root/usr/lib/$triple/gstreamer-1.0/libgst$plugin.so
		cp "$so" "$initrd/usr/lib/$triple/gstreamer-1.0/"
		add_elf "$root" "$triple" "$so"
	done
	cat >>"$initrd/cases.sh" <<CASE
run_case $arch $case_timeout "$marker" env RTCAM_LOG=info $credentials_env \\
	LD_LIBRARY_PATH=/lib/$triple GST_PLUGIN_SYSTEM_PATH_1_0=/usr/lib/$triple/gstreamer-1.0 \\
	GST_REGISTRY_1_0=/tmp/gst-registry-$arch.bin GST_REGISTRY_FORK=no \\
	/usr/bin/rtcam-$arch $guest_args
CASE
done
(cd "$initrd" && find . | cpio -o -H newc --quiet) >"$work/initramfs.cpio"
echo "board: initramfs $(du -m "$work/initramfs.cpio" | cut -f1) MB, ready after $((SECONDS - started)) s"

log=$work/console.log
boot=$SECONDS
timeout $((case_timeout * 3)) qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 1024 \
	-display none -monitor none -serial "file:$log" -no-reboot "${net[@]}" \
	-kernel "$kroot/boot/vmlinuz-$kver" -initrd "$work/initramfs.cpio" \
	-append "console=ttyAMA0 rdinit=/init panic=-1 quiet" || true
echo "board: qemu ran $((SECONDS - boot)) s"
grep '^board:' "$log" || true
failed=0
for target in $targets; do
	case $target in aarch64*) arch=arm64 ;; armv7*) arch=armhf ;; esac
	if grep -q "^board: result $arch marker=yes exit=0 " "$log"; then
		echo "board: $target: saw \"$marker\", then a clean stop"
	else
		echo "board: $target: FAILED; its log:" >&2
		grep "^\[$arch\]" "$log" | tail -40 >&2 || tail -40 "$log" >&2
		failed=1
	fi
done
exit $failed

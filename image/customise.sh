#!/usr/bin/env bash
# Puts rtcam into a Raspberry Pi image without booting it: Raspberry Pi OS Lite (bookworm or
# later, 64-bit) or the Debian image image/build.sh makes. The image's root partition is
# loop-mounted (the boot partition is written with mtools), the .deb is installed inside the image's root (apt, with qemu-user running the
# arm64 maintainer scripts), and rtcam's service and the first-boot unit are enabled; the boot
# partition gets the example files (docs/boards.md, "The boot partition").
#
#   image/customise.sh BASE.img[.xz] RTCAM.deb OUT.img
#
# Writes OUT.img.manifest (the base's, then the packages the install added or changed; the
# image holds the full list as /usr/share/rtcam-image/manifest.txt). Needs root and loop
# devices. The .deb's dependencies come from the image's own apt sources when it lacks them
# (a Raspberry Pi OS base); the image build.sh makes already has them.
set -euo pipefail
base=$(realpath "$1") deb=$(realpath "$2") out=$(realpath -m "$3")
cd "$(dirname "$0")/.."
started=$SECONDS

case $base in
*.xz) xz -dc "$base" >"$out" ;;
*) cp --sparse=always "$base" "$out" ;;
esac

# The FAT partition is the boot partition, the Linux one after it the root.
table=$(sfdisk --dump "$out")
part() { grep -E "type= *$1" <<<"$table" | head -1 | sed -E 's/.*start= *([0-9]+), *size= *([0-9]+).*/\1 \2/'; }
read -r boot_start _ < <(part '(c|b|e)')
read -r root_start root_size < <(part 83)
[ -n "${root_start:-}" ] && [ -n "${boot_start:-}" ] || { echo "customise: $base has no FAT and Linux partitions: $table" >&2; exit 1; }

mnt=$(mktemp -d)
cleanup() {
	for m in proc sys dev/pts dev; do umount "$mnt/$m" 2>/dev/null || true; done
	[ -e "$mnt/etc/resolv.conf.rtcam-image" ] && mv -f "$mnt/etc/resolv.conf.rtcam-image" "$mnt/etc/resolv.conf"
	umount "$mnt" 2>/dev/null || true
	rmdir "$mnt"
}
trap cleanup EXIT
mount -o loop,offset=$((root_start * 512)),sizelimit=$((root_size * 512)) "$out" "$mnt"
[ -d "$mnt/boot/firmware" ] || { echo "customise: no /boot/firmware in the root: Raspberry Pi OS bookworm or later is needed" >&2; exit 1; }
mount -t proc proc "$mnt/proc"
mount -t sysfs sysfs "$mnt/sys"
mount --bind /dev "$mnt/dev"
mount --bind /dev/pts "$mnt/dev/pts"
# apt may fetch the .deb's dependencies: the build machine's resolver, for this install only.
mv "$mnt/etc/resolv.conf" "$mnt/etc/resolv.conf.rtcam-image"
cp /etc/resolv.conf "$mnt/etc/resolv.conf"

if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
	mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	update-binfmts --enable qemu-aarch64
fi

in_root() { chroot "$mnt" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"; }
in_root dpkg-query -W -f='${Package} ${Version} ${Architecture}\n' | sort >"$mnt/tmp/before.txt"
cp "$deb" "$mnt/tmp/rtcam.deb"
# Nothing starts inside the image: the service starts when the board boots.
printf '#!/bin/sh\nexit 101\n' >"$mnt/usr/sbin/policy-rc.d"
chmod +x "$mnt/usr/sbin/policy-rc.d"
# An image that leaves manual pages out (image/build.sh keeps only rtcam's) lacks the directory.
mkdir -p "$mnt/usr/share/man/man1"
if ! in_root apt-get install -y -q -o Dpkg::Options::=--force-confold /tmp/rtcam.deb; then
	in_root apt-get update -q
	in_root apt-get install -y -q -o Dpkg::Options::=--force-confold /tmp/rtcam.deb
fi
rm -f "$mnt/usr/sbin/policy-rc.d" "$mnt/tmp/rtcam.deb"

install -D -m 0755 image/firstboot "$mnt/usr/libexec/rtcam-image/firstboot"
install -m 0644 image/rtcam-firstboot.service "$mnt/etc/systemd/system/rtcam-firstboot.service"
in_root systemctl enable rtcam-firstboot.service rtcam.service
# The examples on the boot partition, copied and renamed by the user (docs/boards.md); with
# mtools, which needs no vfat driver on the build machine.
for example in image/rtcam-setup.txt.example:rtcam-setup.txt.example packaging/rtcam.toml:rtcam.toml.example; do
	mcopy -o -i "$out@@$((boot_start * 512))" "${example%%:*}" "::${example#*:}"
done

in_root dpkg-query -W -f='${Package} ${Version} ${Architecture}\n' | sort >"$mnt/tmp/after.txt"
mkdir -p "$mnt/usr/share/rtcam-image"
{
	echo "# Packages in this image: $(basename "$base") (sha256 $(sha256sum "$base" | cut -c1-64)) with rtcam installed."
	if [ -e "$mnt/usr/share/rtcam-image/base-manifest.txt" ]; then grep '^#' "$mnt/usr/share/rtcam-image/base-manifest.txt"; fi
	echo "# rtcam.deb sha256 $(sha256sum "$deb" | cut -c1-64)"
	echo "# added or changed by installing rtcam:"
	comm -13 "$mnt/tmp/before.txt" "$mnt/tmp/after.txt" | sed 's/^/# + /'
	cat "$mnt/tmp/after.txt"
} >"$mnt/usr/share/rtcam-image/manifest.txt"
cp "$mnt/usr/share/rtcam-image/manifest.txt" "$out.manifest"
rm -f "$mnt/tmp/before.txt" "$mnt/tmp/after.txt"
in_root apt-get clean
echo "customise: $out: rtcam $(dpkg-deb --field "$deb" Version) installed and enabled in $((SECONDS - started)) s"

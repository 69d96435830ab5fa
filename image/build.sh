#!/usr/bin/env bash
# Builds a plain Debian image for the Raspberry Pi 3, 4, 400, Zero 2 W (64-bit), from Debian's
# own packages only: mmdebstrap makes an arm64 root (systemd, systemd-networkd with
# wpa_supplicant and mDNS, OpenSSH, Debian's arm64 kernel, raspi-firmware from
# non-free-firmware, the Wi-Fi firmware, GStreamer), and the image is assembled without loop
# devices: a FAT boot partition (mkfs.vfat + mcopy) and an ext4 root (mkfs.ext4 -d) written into
# an MBR disk image (sfdisk, dd). rtcam goes in afterwards, as into any base image
# (image/customise.sh).
#
#   image/build.sh OUT.img            SUITE=trixie (or bookworm), MIRROR=http://deb.debian.org/debian
#
# Also writes OUT.img.manifest: every package and version in the image (the same list is in the
# image as /usr/share/rtcam-image/base-manifest.txt). MIRROR may be a snapshot.debian.org URL to
# rebuild from the exact same versions. Downloads are cached under target/image/cache/SUITE.
# Needs root (mmdebstrap's root mode keeps owners and file capabilities) and qemu-user-static
# with binfmt_misc for the arm64 maintainer scripts.
set -euo pipefail
out=$(realpath -m "$1")
cd "$(dirname "$0")/.."
suite=${SUITE:-trixie}
mirror=${MIRROR:-http://deb.debian.org/debian}
security=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
cache=$PWD/target/image/cache/$suite
work=$PWD/target/image/work-$suite
started=$SECONDS
mkdir -p "$cache"
rm -rf "$work"
mkdir -p "$work"

# binfmt_misc runs the arm64 maintainer scripts under qemu-user.
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
	mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	update-binfmts --enable qemu-aarch64
fi

# The board: systemd, networking (systemd-networkd for Ethernet, wpa_supplicant for Wi-Fi,
# systemd-resolved answering for HOSTNAME.local), SSH, clock over NTP (the Pi has no RTC),
# partition and file system tools (growing the root, fsck at boot); kernel, boot firmware,
# Wi-Fi firmware; rtcam's runtime (GStreamer with the plugins its .deb depends on and
# recommends) so that installing rtcam needs no download.
packages=(
	systemd-sysv udev kmod dbus initramfs-tools zstd linux-image-arm64 raspi-firmware
	firmware-brcm80211 wireless-regdb wpasupplicant iw systemd-resolved systemd-timesyncd
	openssh-server ca-certificates iproute2 iputils-ping fdisk dosfstools e2fsprogs tzdata nano less
	adduser gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
	gstreamer1.0-plugins-ugly gstreamer1.0-libcamera gstreamer1.0-alsa
)
sources="deb [signed-by=$keyring] $mirror $suite main non-free-firmware
deb [signed-by=$keyring] $mirror $suite-updates main non-free-firmware
deb [signed-by=$keyring] $security $suite-security main non-free-firmware"

# A camera has no use for translations, manuals or documentation beyond copyright files (and
# rtcam's own); dpkg keeps leaving them out on the board. Unsafe I/O only while building.
slim=()
for option in path-exclude=/usr/share/locale/* path-include=/usr/share/locale/locale.alias \
	path-exclude=/usr/share/man/* path-include=/usr/share/man/man1/rtcam* path-exclude=/usr/share/info/* \
	path-exclude=/usr/share/doc/* path-include=/usr/share/doc/*/copyright path-include=/usr/share/doc/rtcam/*; do
	slim+=("--dpkgopt=$option")
done

echo "image: mmdebstrap $suite arm64 ($mirror)"
mmdebstrap --arch=arm64 --variant=minbase --include="${packages[*]}" \
	--dpkgopt=force-unsafe-io "${slim[@]}" \
	--essential-hook="$PWD/image/root-setup.sh --hold \"\$1\"" \
	--setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
	--setup-hook="sync-in $cache /var/cache/apt/archives/" \
	--customize-hook="sync-out /var/cache/apt/archives $cache" \
	--customize-hook="$PWD/image/root-setup.sh \"\$1\"" \
	--skip=download/empty \
	"$suite" "$work/root" "$sources"
root=$work/root
cp "$root/usr/share/rtcam-image/base-manifest.txt" "$out.manifest"

# The boot partition holds what the Pi's firmware reads (raspi-firmware put it in
# /boot/firmware): firmware, device trees, config.txt, cmdline.txt, kernel, initramfs.
boot_mb=512
boot=$work/boot.vfat
truncate -s "${boot_mb}M" "$boot"
mkfs.vfat -F 32 -n RASPIFIRM "$boot" >/dev/null
mcopy -i "$boot" -s -m "$root"/boot/firmware/* ::/
rm -rf "${root:?}"/boot/firmware/*

# The root file system: its contents and room to spare; the first boot grows it to the card.
used_mb=$(du -sm "$root" | cut -f1)
root_mb=$((used_mb * 5 / 4 + 256))
rootfs=$work/root.ext4
# Reproducible: a fixed time for the file system's own stamps when SOURCE_DATE_EPOCH is set.
mkfs.ext4 -q -L RASPIROOT -d "$root" -E root_owner=0:0 "$rootfs" "${root_mb}M"

# MBR (the Pi's boot ROM reads MBR only): the boot partition at 4 MiB, the root after it.
rm -f "$out"
truncate -s $((4 + boot_mb + root_mb))M "$out"
sfdisk --quiet "$out" <<TABLE
label: dos
start=4MiB, size=${boot_mb}MiB, type=c, bootable
start=$((4 + boot_mb))MiB, size=${root_mb}MiB, type=83
TABLE
dd if="$boot" of="$out" bs=1M seek=4 conv=notrunc,sparse status=none
dd if="$rootfs" of="$out" bs=1M seek=$((4 + boot_mb)) conv=notrunc,sparse status=none
rm -rf "$work"
echo "image: $out: $(du -m --apparent-size "$out" | cut -f1) MB ($(du -m "$out" | cut -f1) MB used), built in $((SECONDS - started)) s"

#!/usr/bin/env bash
# Prepares the image tests/image.rs boots: the Debian base image (tests/image/base.sh), rtcam's
# arm64 .deb (the board-test build) put in with image/customise.sh, exactly as `make image`
# does, and then, for the test only, the vivid camera driver loaded at boot. Leaves in target/image/test/: rtcam.img, the
# kernel, initramfs and cmdline.txt from its boot partition, and timings.txt.
#
#   tests/image/prepare.sh            IMAGE_SUITE=trixie (the image's default)
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=target/image/test
mkdir -p "$dir"
: >"$dir/timings.txt"

# The base: rebuilt when its scripts change, and once a day for the archive's updates.
base=$(tests/image/base.sh)
cat "$base.time" >>"$dir/timings.txt" 2>/dev/null || true

t=$SECONDS
cross/build.sh aarch64-unknown-linux-gnu board-test
cargo deb --fast --no-build --target aarch64-unknown-linux-gnu --profile board-test \
	-o target/aarch64-unknown-linux-gnu/debian/ >/dev/null
deb=$(ls -t target/aarch64-unknown-linux-gnu/debian/rtcam_*_arm64.deb | head -1)
echo "rtcam .deb ready in $((SECONDS - t)) s" | tee -a "$dir/timings.txt"

t=$SECONDS
image/customise.sh "$base" "$deb" "$dir/rtcam.img"
echo "rtcam installed into the image in $((SECONDS - t)) s" | tee -a "$dir/timings.txt"

# Test-only: the vivid virtual camera (one capture node), loaded at boot.
table=$(sfdisk --dump "$dir/rtcam.img")
offsets() { grep -E "type= *$1" <<<"$table" | head -1 | sed -E 's/.*start= *([0-9]+), *size= *([0-9]+).*/\1 \2/'; }
read -r root_start root_size < <(offsets 83)
read -r boot_start _ < <(offsets c)
mnt=$(mktemp -d)
mount -o loop,offset=$((root_start * 512)),sizelimit=$((root_size * 512)) "$dir/rtcam.img" "$mnt"
echo vivid >"$mnt/etc/modules-load.d/rtcam-test-vivid.conf"
echo "options vivid n_devs=1 node_types=0x1" >"$mnt/etc/modprobe.d/rtcam-test-vivid.conf"
umount "$mnt"
rmdir "$mnt"
# Room on the "card" for the first boot to grow the root into.
truncate -s +512M "$dir/rtcam.img"

# What qemu boots directly: the kernel and initramfs the Pi's firmware would load.
rm -f "$dir"/vmlinuz-* "$dir"/initrd.img-* "$dir/cmdline.txt"
for f in $(mdir -b -i "$dir/rtcam.img@@$((boot_start * 512))" :: | grep -E '/(vmlinuz-|initrd\.img-|cmdline\.txt)'); do
	mcopy -n -i "$dir/rtcam.img@@$((boot_start * 512))" "$f" "$dir/"
done
ls "$dir"/vmlinuz-* "$dir"/initrd.img-* "$dir/cmdline.txt" >/dev/null
echo "image-test: $dir/rtcam.img ready ($(du -m "$dir/rtcam.img" | cut -f1) MB used)"

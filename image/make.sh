#!/usr/bin/env bash
# `make image`: the flashable image with rtcam, compressed, with its block map and manifest.
#
#   image/make.sh DEB [BASE]      SUITE=trixie|bookworm (without BASE), OUT=target/image
#
# Without BASE: a Debian image for the Raspberry Pi 3/4/400/Zero 2 W from image/build.sh. With
# BASE (a Raspberry Pi OS Lite image, .img or .img.xz): that image. Either way rtcam goes in with
# image/customise.sh. Leaves NAME.img.xz, NAME.img.bmap (bmaptool's block map of the raw image)
# and NAME.manifest (every package and version in the image) in OUT.
set -euo pipefail
deb=$(realpath "$1")
base=${2:+$(realpath "$2")}
cd "$(dirname "$0")/.."
suite=${SUITE:-trixie}
out=${OUT:-target/image}
mkdir -p "$out"
started=$SECONDS
if [ -z "$base" ]; then
	name=rtcam-debian-$suite-raspi-arm64
	base=$out/debian-$suite-raspi-arm64.img
	SUITE=$suite image/build.sh "$base"
else
	name=$(basename "$base")
	name=rtcam-${name%%.img*}
fi
image/customise.sh "$base" "$deb" "$out/$name.img"
built=$((SECONDS - started))
bmaptool -q create -o "$out/$name.img.bmap" "$out/$name.img"
xz -T0 -6 -f "$out/$name.img"
mv "$out/$name.img.manifest" "$out/$name.manifest"
echo "image: $out/$name.img.xz: $(du -m "$out/$name.img.xz" | cut -f1) MB compressed" \
	"($(du -m --apparent-size "$out/$name.img.bmap" >/dev/null; grep -o '<ImageSize>[0-9]*' "$out/$name.img.bmap" | cut -d'>' -f2 | awk '{ printf "%d", $1 / 1048576 }') MB raw)," \
	"built in $built s, compressed in $((SECONDS - started - built)) s"
echo "image: flash it with: bmaptool copy $out/$name.img.xz /dev/sdX   (or Raspberry Pi Imager, or xzcat … | dd)"

#!/usr/bin/env bash
# Cross-compiles rtcam for a board from a Debian amd64 machine, without Docker.
#
#   cross/build.sh TARGET [PROFILE]     TARGET: aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf
#                                       PROFILE: release (default) or board-test (what `make test` uses)
#
# Needs: the rustup target, Debian's cross gcc for it, libclang (for the v4l bindings), and a
# sysroot of the target's GStreamer dev packages, which cross/debs.sh downloads and unpacks
# under target/cross/ARCH (about 450 MB, once). The binary lands in target/TARGET/PROFILE/rtcam.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$1 profile=${2:-release}
case $target in
aarch64-unknown-linux-gnu) arch=arm64 triple=aarch64-linux-gnu ;;
armv7-unknown-linux-gnueabihf) arch=armhf triple=arm-linux-gnueabihf ;;
*) echo "cross/build.sh: unsupported target $target (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf)" >&2; exit 2 ;;
esac
cross/debs.sh "$arch" "target/cross/$arch" libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
# The RTSP server's library and headers alone: its -dev package's dependencies reach into
# plugins-bad's and X11's dev packages (gigabytes), and what it links against is already above.
cross/debs.sh --no-deps "$arch" "target/cross/$arch" libgstrtspserver-1.0-dev libgstrtspserver-1.0-0
sysroot=$PWD/target/cross/$arch/root
t=${target//-/_}
tu=${t^^}
# The linker resolves libgstreamer's own dependencies (glib, orc…) through -rpath-link; the C
# library and crt files come from Debian's cross toolchain (libc6-dev-ARCH-cross), not the
# sysroot, which holds no libc6-dev on purpose.
export "CARGO_TARGET_${tu}_LINKER=$triple-gcc"
export "CARGO_TARGET_${tu}_RUSTFLAGS=-C link-arg=-Wl,-rpath-link,$sysroot/usr/lib/$triple -C link-arg=-Wl,-rpath-link,$sysroot/lib/$triple"
export "CC_$t=$triple-gcc" "AR_$t=$triple-ar"
# pkg-config answers with the sysroot's .pc files, paths prefixed by the sysroot.
export PKG_CONFIG_ALLOW_CROSS=1
export "PKG_CONFIG_SYSROOT_DIR_$t=$sysroot"
export "PKG_CONFIG_LIBDIR_$t=$sysroot/usr/lib/$triple/pkgconfig:$sysroot/usr/share/pkgconfig"
# bindgen (v4l2-sys) parses the target's kernel headers, from linux-libc-dev-ARCH-cross.
export "BINDGEN_EXTRA_CLANG_ARGS_$t=--target=$triple -isystem /usr/$triple/include"
# Run from a test (cargo test sets CARGO_PKG_NAME, CARGO_MANIFEST_DIR… for it), these would look
# like changed inputs to build scripts that watch them (ring does) and rebuild half the tree.
for v in $(compgen -e | grep -E '^(CARGO_(PKG|MANIFEST|CRATE|BIN_EXE|PRIMARY|TARGET_TMPDIR)|OUT_DIR$)'); do
	unset "$v"
done
cargo build --locked --target "$target" --profile "$profile"

#!/usr/bin/env bash
# The Debian base image the image test boots (image/build.sh), kept in target/image/test/ for
# the day and while image/build.sh and image/root-setup.sh are unchanged.
#
#   tests/image/base.sh            prints the base image's path, building it first if needed
#                                  (after waiting for a build that --start began)
#   tests/image/base.sh --start    starts building it in the background at idle priority, unless
#                                  it is already built or being built
#
# IMAGE_SUITE=trixie (the image's default) or bookworm. A base takes about a quarter of an hour
# of one core (arm64 maintainer scripts under qemu-user): `make test` starts it first, so that it
# overlaps the other tests and the image test at the end finds it ready. A background build
# goes on when the make that started it stops; the next run uses what it built.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=target/image/test
suite=${IMAGE_SUITE:-trixie}
key=$(cat image/build.sh image/root-setup.sh | sha256sum | cut -c1-12)-$(date -u +%Y%m%d)-$suite
base=$dir/base-$key.img
lock=$dir/base-$suite.lock
log=$dir/base-$suite.log
mkdir -p "$dir"

build() {
	[ -e "$base" ] && return
	rm -f "$dir"/base-*-"$suite".img "$dir"/base-*-"$suite".img.*
	local started=$SECONDS
	SUITE=$suite image/build.sh "$base.tmp"
	mv "$base.tmp.manifest" "$base.manifest"
	echo "base image built in $((SECONDS - started)) s${BASE_BUILD_NOTE:-}" >"$base.time"
	mv "$base.tmp" "$base"
}

case ${1:-} in
--start)
	[ -e "$base" ] && exit 0
	# flock -n: a build already under way keeps the lock, and this one gives up at once.
	BASE_BUILD_NOTE=" (in the background, at idle priority)" setsid nohup \
		flock -n "$lock" nice -n 19 ionice -c 3 "$0" --build-locked >"$log" 2>&1 </dev/null &
	echo "image: building the $suite base image in the background ($log)"
	;;
--build-locked) build ;;
'')
	[ -e "$base" ] || {
		echo "image: waiting for the $suite base image (a background build logs to $log)" >&2
		flock "$lock" "$0" --build-locked >&2
	}
	echo "$base"
	;;
*)
	echo "usage: tests/image/base.sh [--start]" >&2
	exit 2
	;;
esac

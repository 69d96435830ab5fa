#!/usr/bin/env bash
# The .deb's dependencies resolve with apt on Debian 12 (bookworm) and 13 (trixie), arm64:
# apt simulates installing it on an empty system of each suite, from a private apt state under
# target/image/apt-SUITE (the host's dpkg is not touched). Prints what apt would install.
#
#   tests/image/suite.sh DEB [SUITE...]     default suites: bookworm trixie
set -euo pipefail
deb=$(realpath "$1")
shift
cd "$(dirname "$0")/../.."
arch=$(dpkg-deb --field "$deb" Architecture)
for suite in ${*:-bookworm trixie}; do
	dir=$PWD/target/image/apt-$suite-$arch
	mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
	touch "$dir/status"
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" >"$dir/sources.list"
	opts=(
		-o "Dir::Etc::SourceList=$dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
		-o "Dir::State=$dir" -o "Dir::State::Lists=$dir/lists" -o "Dir::State::status=$dir/status"
		-o "Dir::Cache=$dir/cache" -o "APT::Architecture=$arch" -o "APT::Architectures::=$arch"
		-o "Acquire::Languages=none" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root"
	)
	if [ -z "$(find "$dir/lists" -name '*_Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
		apt-get "${opts[@]}" update -qq
	fi
	if ! out=$(apt-get "${opts[@]}" install -s -q --no-install-recommends "$deb" 2>&1); then
		echo "suite: rtcam's dependencies do not resolve on $suite $arch:" >&2
		echo "$out" >&2
		exit 1
	fi
	picked=$(grep -oE '^Inst (libglib2\.0-0[a-z0-9]*|libgstreamer1\.0-0|gstreamer1\.0-plugins-bad) \([^ ]+' <<<"$out" | sed 's/^Inst //; s/ (/ /' | tr '\n' ',' | sed 's/,$//; s/,/, /g')
	echo "suite: $suite $arch: rtcam installs with $(grep -c '^Inst ' <<<"$out") packages ($picked)"
done

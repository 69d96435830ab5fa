#!/usr/bin/env bash
# Downloads Debian packages of another architecture and unpacks them into a directory, without
# touching the host's dpkg: a private apt state (lists, cache, an empty dpkg status) under DIR
# reads the host's apt sources for ARCH only, resolves the dependency closure of the packages
# asked for, downloads the .debs and `dpkg -x`es each one once.
#
# Why not `dpkg --add-architecture` and multiarch installs: on Debian 12 the arm64
# libgstreamer-plugins-base1.0-dev replaces the amd64 one, so installing it would break the
# host build.
#
#   cross/debs.sh [--no-deps|--depends] ARCH DIR PACKAGE...
#       e.g. cross/debs.sh arm64 target/cross/arm64 libgstreamer1.0-dev
#   --no-deps   only the packages named (a kernel, busybox: their dependencies are not needed)
#   --depends   print what the packages depend on directly and download nothing (to resolve a
#               meta-package such as linux-image-arm64 to today's ABI)
#
# Unpacks into DIR/root. Idempotent and quiet when everything is already there; the apt lists
# are refreshed at most once a day.
set -euo pipefail
mode=closure
case ${1:-} in --no-deps | --depends) mode=${1#--}; shift ;; esac
arch=$1 dir=$2
shift 2
mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial" "$dir/debs" "$dir/root" "$dir/stamps"
dir=$(cd "$dir" && pwd)
touch "$dir/apt/status"
apt_opts=(
	-o "Dir::State=$dir/apt" -o "Dir::State::Lists=$dir/apt/lists"
	-o "Dir::State::status=$dir/apt/status" -o "Dir::Cache=$dir/apt/cache"
	-o "APT::Architecture=$arch" -o "APT::Architectures::=$arch"
	-o "Acquire::Languages=none" -o "Acquire::Retries=3" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root"
)
if [ -z "$(find "$dir/apt/lists" -name '*_Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
	echo "debs.sh: refreshing $arch package lists"
	# A mirror caught mid-sync answers with a short index; a later try usually gets a whole one.
	# One that stays broken (seen for days with bookworm-security's armhf index) is left out:
	# the main archive's lists are enough to build and test against.
	updated=
	for try in 1 2 3; do
		apt-get "${apt_opts[@]}" update -qq && updated=1 && break
		[ "$try" = 3 ] || sleep 5
	done
	if [ -z "$updated" ]; then
		compgen -G "$dir/apt/lists/*_main_binary-${arch}_Packages*" >/dev/null || exit 1
		echo "debs.sh: some $arch package lists could not be fetched; going on with the others" >&2
	fi
fi
if [ "$mode" = depends ]; then
	apt-cache "${apt_opts[@]}" depends --no-recommends --no-suggests --no-conflicts --no-breaks \
		--no-replaces --no-enhances "$@" | sed -n 's/^ *Depends: \([^ :]*\).*/\1/p'
	exit 0
fi
# What the packages need to be usable, minus what only matters to a running Debian system
# (maintainer scripts, interpreters, documentation tools): none of it is linked or loaded.
skip='^(debconf|dpkg|install-info|perl.*|python3.*|libpython3.*|tzdata|sensible-utils|readline-common|libglib2\.0-(bin|dev-bin|data)|adduser|passwd|login|libpam.*|base-files|lsb-base|ucf|gcc-12-base|shared-mime-info|dconf-.*|xkb-data|fontconfig-config|fonts-.*|iso-codes|mount|util-linux.*|init-system-helpers|debianutils|coreutils|mime-support|media-types|netbase|libc-dev-bin|linux-libc-dev|libc6-dev|libcrypt-dev|rpcsvc-proto|libnsl-dev|libtirpc-dev|.*-doc)$'
if [ "$mode" = no-deps ]; then
	closure="$*"
else
closure=$(apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests \
	--no-conflicts --no-breaks --no-replaces --no-enhances --no-pre-depends "$@" \
	| grep -v '^ ' | sed 's/:.*//' | grep -v '^<' | sort -u | grep -Ev "$skip" || true)
fi
missing=()
for p in $closure; do
	compgen -G "$dir/debs/${p}_*.deb" >/dev/null || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "debs.sh: downloading ${#missing[@]} $arch packages"
	# A virtual package has no .deb: apt-get download names it and fails, so try one by one
	# only when the batch fails.
	(cd "$dir/debs" && { apt-get "${apt_opts[@]}" download -qq "${missing[@]/%/:$arch}" 2>/dev/null ||
		for p in "${missing[@]}"; do apt-get "${apt_opts[@]}" download -qq "$p:$arch" 2>/dev/null || true; done; })
fi
for deb in "$dir"/debs/*.deb; do
	stamp="$dir/stamps/$(basename "$deb").done"
	[ -e "$stamp" ] && continue
	dpkg -x "$deb" "$dir/root"
	touch "$stamp"
done

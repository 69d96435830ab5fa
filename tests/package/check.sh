#!/usr/bin/env bash
# Checks a built rtcam .deb: control fields, the files it installs, the conffile, the systemd
# hooks, and lintian without errors.
#
#   tests/package/check.sh DEB ARCH        e.g. tests/package/check.sh target/…/rtcam_0.1.0-1_arm64.deb arm64
set -euo pipefail
deb=$1 arch=$2
fail() { echo "package: $deb: $*" >&2; exit 1; }
info=$(dpkg-deb --info "$deb")
contents=$(dpkg-deb --contents "$deb")
field() { dpkg-deb --field "$deb" "$1"; }

[ "$(field Package)" = rtcam ] || fail "Package is $(field Package)"
[ "$(field Architecture)" = "$arch" ] || fail "Architecture is $(field Architecture), not $arch"
for dep in adduser libgstreamer1.0-0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly; do
	field Depends | tr ',' '\n' | grep -q "^ *$dep\b" || fail "Depends lacks $dep: $(field Depends)"
done
# Plugins only some boards use are recommended, never required.
field Recommends | tr ',' '\n' | grep -q '^ *gstreamer1.0-libcamera\b' || fail "Recommends lacks gstreamer1.0-libcamera: $(field Recommends)"
field Recommends | tr ',' '\n' | grep -q '^ *gstreamer1.0-alsa\b' || fail "Recommends lacks gstreamer1.0-alsa: $(field Recommends)"
field Depends | grep -Eq 'libcamera|gstreamer1.0-alsa' && fail "Depends on a plugin some boards do not need: $(field Depends)"
for path in ./usr/bin/rtcam ./etc/rtcam/rtcam.toml ./usr/lib/systemd/system/rtcam.service \
	./usr/share/doc/rtcam/README.md ./usr/share/doc/rtcam/rtcam.example.toml \
	./usr/share/doc/rtcam/boards.md ./usr/share/doc/rtcam/copyright \
	./usr/share/doc/rtcam/mosquitto/rtcam-acl.conf ./usr/share/doc/rtcam/mosquitto/rtcam.conf \
	./usr/share/man/man1/rtcam.1.gz ./usr/share/man/man1/rtcam-devices.1.gz \
	./usr/share/bash-completion/completions/rtcam ./usr/share/zsh/vendor-completions/_rtcam \
	./usr/share/fish/vendor_completions.d/rtcam.fish; do
	grep -q " $path\$" <<<"$contents" || fail "does not install $path"
done
grep -q '^-rwxr-xr-x 0/0 .* ./usr/bin/rtcam$' <<<"$contents" || fail "rtcam is not an executable owned by root"
grep -q '^-rw-r----- 0/0 .* ./etc/rtcam/rtcam.toml$' <<<"$contents" || fail "rtcam.toml is not 0640"
grep -q 'conffiles' <<<"$info" || fail "no conffiles"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb --ctrl-tarfile "$deb" | tar -x -C "$tmp"
grep -qx /etc/rtcam/rtcam.toml "$tmp/conffiles" || fail "rtcam.toml is not a conffile"
grep -q 'adduser --system --group' "$tmp/postinst" || fail "postinst does not create the rtcam user"
grep -q 'adduser rtcam "$group"' "$tmp/postinst" || fail "postinst does not add rtcam to video/audio"
# The conffile sets nothing, so the binary's defaults apply and an upgrade can change them;
# the documented example beside the docs has the same keys, set.
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" ./etc/rtcam/rtcam.toml ./usr/share/man/man1/rtcam.1.gz
grep -Eq '^[a-z_]+ *=' "$tmp/etc/rtcam/rtcam.toml" && fail "rtcam.toml sets a key: $(grep -E '^[a-z_]+ *=' "$tmp/etc/rtcam/rtcam.toml" | head -1)"
grep -Eq '^# [a-z_]+ = ' "$tmp/etc/rtcam/rtcam.toml" || fail "rtcam.toml shows no commented keys"
zcat "$tmp/usr/share/man/man1/rtcam.1.gz" | grep -q '^\.TH rtcam 1' || fail "rtcam.1 is not rtcam's manual page"
grep -q 'deb-systemd-helper enable rtcam.service' "$tmp/postinst" || fail "the service is not enabled on install"
grep -q 'deb-systemd-invoke $_dh_action rtcam.service' "$tmp/postinst" || fail "the service is not started on install"

# The binary is for the package's architecture and stripped.
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" ./usr/bin/rtcam
case $arch in arm64) machine=AArch64 ;; armhf) machine=ARM ;; amd64) machine=X86-64 ;; esac
readelf -h "$tmp/usr/bin/rtcam" | grep -q "Machine: *.*$machine" || fail "rtcam is not a $machine binary"
readelf -S "$tmp/usr/bin/rtcam" | grep -q '\.symtab' && fail "rtcam is not stripped"

# lintian: errors fail, warnings are shown (the 0640 config is on purpose).
out=$(lintian --tag-display-limit 0 "$deb" 2>&1 | grep -v 'running with root privileges' || true)
[ -n "$out" ] && echo "$out"
grep -q '^E:' <<<"$out" && fail "lintian errors"
echo "package: $(basename "$deb"): ok ($(du -k "$deb" | cut -f1) kB)"

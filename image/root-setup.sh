#!/usr/bin/env bash
# mmdebstrap customize hook for image/build.sh: turns the fresh arm64 root ($1) into a board's
# system. Runs on the build machine; commands inside the root run under qemu-user.
set -euo pipefail
in_root() { chroot "$root" "$@"; }

# Essential hook: work the package installs would repeat, or do only to be thrown away, is held
# back until the customize hook below does it once. Every package that touches the kernel or
# udev would rebuild the initramfs, and the CA store is rehashed at ca-certificates' configure
# and again at its trigger: minutes each under qemu-user. openssh-server's configure makes host
# keys only where none exist; each card makes its own at its first boot (image/firstboot), so
# empty placeholders save generating keys that would be deleted.
if [ "$1" = --hold ]; then
	root=$2
	for tool in /usr/sbin/update-initramfs /usr/sbin/update-ca-certificates; do
		in_root dpkg-divert --quiet --local --rename --add "$tool"
		printf '#!/bin/sh\nexit 0\n' >"$root$tool"
		chmod 0755 "$root$tool"
	done
	mkdir -p "$root/etc/ssh"
	for type in rsa ecdsa ed25519; do : >"$root/etc/ssh/ssh_host_${type}_key"; done
	exit 0
fi
root=$1

# dpkg on the board writes safely; the build's --force-unsafe-io stays behind.
sed -i '/^force-unsafe-io$/d' "$root"/etc/dpkg/dpkg.cfg.d/99mmdebstrap 2>/dev/null || true

# Partitions by label, as image/build.sh makes them. The boot partition is root's alone: a
# rtcam.toml put there may hold a password.
cat >"$root/etc/fstab" <<'FSTAB'
# <file system>    <mount point>   <type>  <options>                      <dump> <pass>
LABEL=RASPIROOT    /               ext4    defaults,noatime               0      1
LABEL=RASPIFIRM    /boot/firmware  vfat    defaults,umask=0077,noatime    0      2
FSTAB

# raspi-firmware writes cmdline.txt and config.txt at each kernel or initramfs update: the root
# by label, the serial console (ttyS1 on the Pi 3/4/Zero 2 W) and the screen.
sed -i 's|^#\?ROOTPART=.*|ROOTPART=LABEL=RASPIROOT|; s|^#\?CONSOLES=.*|CONSOLES="ttyS1,115200 tty0"|' \
	"$root/etc/default/raspi-firmware"
kver=$(basename "$(ls -1 "$root"/boot/vmlinuz-* | sort -V | tail -1)")
kver=${kver#vmlinuz-}
# The initramfs, once; zstd compresses it in a fraction of gzip's time under emulation.
echo COMPRESS=zstd >"$root/etc/initramfs-tools/conf.d/compress"
for tool in /usr/sbin/update-initramfs /usr/sbin/update-ca-certificates; do
	rm -f "$root$tool"
	in_root dpkg-divert --quiet --local --rename --remove "$tool"
done
in_root update-ca-certificates --fresh >/dev/null
in_root update-initramfs -c -k "$kver"
# raspi-firmware's hook puts kernel, initramfs, device trees, config.txt and cmdline.txt on
# the boot partition.
DEB_MAINT_PARAMS=configure in_root /etc/kernel/postinst.d/z50-raspi-firmware "$kver"

echo rtcam >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\trtcam\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"

# Networking: DHCP on any wired and wireless link, the board answering as HOSTNAME.local.
mkdir -p "$root/etc/systemd/network" "$root/etc/systemd/resolved.conf.d" \
	"$root/etc/systemd/system/systemd-networkd-wait-online.service.d"
for kind in wired:'eth* en*' wireless:'wlan* wl*'; do
	cat >"$root/etc/systemd/network/50-${kind%%:*}.network" <<NETWORK
[Match]
Name=${kind#*:}

[Network]
DHCP=yes
MulticastDNS=yes
NETWORK
done
printf '[Resolve]\nMulticastDNS=yes\n' >"$root/etc/systemd/resolved.conf.d/mdns.conf"
# Online as soon as one link is (a board has Ethernet or Wi-Fi, seldom both).
printf '[Service]\nExecStart=\nExecStart=/usr/lib/systemd/systemd-networkd-wait-online --any --timeout=60\n' \
	>"$root/etc/systemd/system/systemd-networkd-wait-online.service.d/any.conf"
in_root systemctl enable systemd-networkd.service systemd-resolved.service systemd-timesyncd.service >/dev/null 2>&1
in_root systemctl enable systemd-networkd-wait-online.service >/dev/null 2>&1 || true

# Each card makes its own SSH host keys and machine id at its first boot.
rm -f "$root"/etc/ssh/ssh_host_*
echo uninitialized >"$root/etc/machine-id"
# That first boot is headless: systemd-firstboot's console prompts would wait for ever. The boot
# partition's files (rtcam-firstboot.service) set what it would ask for.
ln -sf /dev/null "$root/etc/systemd/system/systemd-firstboot.service"
rm -f "$root/var/lib/dbus/machine-id"

mkdir -p "$root/usr/share/rtcam-image"
{
	echo "# Debian packages in this image (image/build.sh), as dpkg-query reports them."
	echo "# apt sources: $(grep -h '^deb ' "$root"/etc/apt/sources.list "$root"/etc/apt/sources.list.d/*.list 2>/dev/null | sed 's/\[[^]]*\] //' | tr '\n' ';')"
	in_root dpkg-query -W -f='${Package} ${Version} ${Architecture}\n'
} >"$root/usr/share/rtcam-image/base-manifest.txt"

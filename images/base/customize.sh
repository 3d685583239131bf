#!/bin/sh
# mmdebstrap customize hook: $1 is the new root tree. Makes the base bootable and generic.
set -eu
root="$1"

# Build-host SSH host keys end up in the tree; every appliance gets its own at launch.
rm -f "$root"/etc/ssh/ssh_host_*
# Empty: systemd makes a new machine ID at every first start of the image (machine-id(5)).
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root/var/lib/systemd/random-seed"

# Networking: systemd-networkd (rendered by cloud-init), resolved for DNS.
mkdir -p "$root/etc/cloud/cloud.cfg.d"
cp "$(dirname "$0")/cloud.cfg" "$root/etc/cloud/cloud.cfg.d/90-local-base.cfg"
chroot "$root" systemctl enable systemd-networkd.service systemd-resolved.service >/dev/null 2>&1
# No login prompt on a VGA console nobody looks at; the serial console keeps one.
chroot "$root" systemctl disable getty@tty1.service >/dev/null 2>&1 || true

#!/bin/sh
# mmdebstrap customize hook for the simulator's stock image: $1 is the new root tree.
set -eu
root="$1"
here=$(dirname "$0")
rm -f "$root"/etc/ssh/ssh_host_*
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root/var/lib/systemd/random-seed"
mkdir -p "$root/etc/cloud/cloud.cfg.d"
cp "$here/cloud.cfg" "$root/etc/cloud/cloud.cfg.d/90-digitalocean.cfg"
# The simulated internet's public CA (it signs the simulated Let's Encrypt's API certificate), in
# the image's CA list the way ISRG's roots are in Debian's: through /etc/ca-certificates.conf.
if [ -n "${OUTBAND_SIM_PUBLIC_CA:-}" ]; then
  mkdir -p "$root/usr/share/ca-certificates/simulated-web"
  cp "$OUTBAND_SIM_PUBLIC_CA" "$root/usr/share/ca-certificates/simulated-web/simulated-web-root.crt"
  echo "simulated-web/simulated-web-root.crt" >> "$root/etc/ca-certificates.conf"
  chroot "$root" update-ca-certificates >/dev/null
fi
printf 'auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n' > "$root/etc/network/interfaces"
chroot "$root" systemctl disable getty@tty1.service >/dev/null 2>&1 || true

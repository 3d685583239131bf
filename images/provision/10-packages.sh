#!/bin/sh
# inputs: lock/apt-packages.txt
# Server packages. No daemon may start while the image is made, in a chroot or on a live build VM:
# policy-rc.d refuses every start (diskimage-builder's trick); first boot starts the services.
set -eu
export DEBIAN_FRONTEND=noninteractive
# dpkg without an fsync per file (as mmdebstrap builds): an image is flushed once, when it is
# written, and a build that crashes is built again; on a live build VM under emulation every
# sync waits for the emulated disk. The seal removes this setting.
printf 'force-unsafe-io\n' > /etc/dpkg/dpkg.cfg.d/outband-build
printf '#!/bin/sh\n# Outband build: no daemon starts while the image is made.\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
apt-get update -q
# Installing systemd-resolved points /etc/resolv.conf at its stub, which does not answer while the
# image is made (no daemon starts): keep the build's resolver until the seal sets the stub.
resolv=$(mktemp)
cat /etc/resolv.conf > "$resolv"
# The base may be a few days old: take the security updates now.
apt-get -y -q -o Dpkg::Options::=--force-confold dist-upgrade
# shellcheck disable=SC2046 # one package name per word
apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold \
  $(sed -e 's/#.*//' "$OUTBAND_STAGE/lock/apt-packages.txt")
# A cloud's stock image may manage the network with ifupdown/resolvconf: the appliance uses
# networkd + resolved (rendered by cloud-init) on every path, and nothing else.
apt-get purge -y -q ifupdown resolvconf >/dev/null 2>&1 || true
rm -f /etc/resolv.conf
cat "$resolv" > /etc/resolv.conf
rm -f "$resolv"
# Packages' own default sites and configs are replaced by the appliance's.
rm -f /etc/nginx/sites-enabled/default
# ssl-cert generated a "snakeoil" key pair during the install: one private key shared by every
# appliance. Nothing uses it (PostgreSQL listens on localhost only, without TLS): remove it.
for conf in /etc/postgresql/*/main/postgresql.conf; do
  sed -i -e "s/^ssl = on/ssl = off/" -e "s/^#\?listen_addresses = .*/listen_addresses = 'localhost'/" "$conf"
done
rm -f /etc/ssl/private/ssl-cert-snakeoil.key /etc/ssl/certs/ssl-cert-snakeoil.pem

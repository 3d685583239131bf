#!/bin/sh
# inputs: files
# The appliance's own files: first-boot configurator and templates, units, firewall, hardening.
# Services are enabled here and started by first boot, once their configs exist.
set -eu
cp -r "$OUTBAND_STAGE/files/." /
chmod 0755 /usr/local/lib/outband/firstboot.py /etc/letsencrypt/renewal-hooks/deploy/outband
chmod 0644 /etc/systemd/system/*.service /etc/nftables.conf
install -d -o root -g root -m 0700 /etc/outband
install -d -m 0755 /var/lib/outband
systemctl daemon-reload 2>/dev/null || true
systemctl enable outband-firstboot.service synapse.service nginx.service coturn.service \
  postgresql.service nftables.service unattended-upgrades.service ssh.service >/dev/null 2>&1

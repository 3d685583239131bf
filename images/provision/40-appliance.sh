#!/bin/sh
# inputs: files
# The appliance's own files: first-boot configurator and templates, units, firewall, hardening.
# Services are enabled here and started by first boot, once their configs exist.
set -eu
cp -r "$OUTBAND_STAGE/files/." /
chmod 0755 /usr/local/lib/outband/firstboot.py /etc/letsencrypt/renewal-hooks/deploy/outband
chmod 0644 /usr/local/lib/outband/synapse-start.py
chmod 0644 /etc/systemd/system/*.service /etc/nftables.conf
install -d -o root -g root -m 0700 /etc/outband
# PostgreSQL listens on localhost only, so it need not wait for network.target, which this image
# reaches only after cloud-init's local stage: first boot waits for the database. A drop-in cannot
# remove an ordering, so the unit is Debian's own minus that line, made from the installed one at
# each bake; the bake fails if Debian's unit no longer has that line (then revisit this).
vendor=/usr/lib/systemd/system/postgresql@.service
grep -qx 'After=network.target' "$vendor" || { echo "$vendor: no 'After=network.target' to drop" >&2; exit 1; }
sed '/^After=network.target$/d' "$vendor" > /etc/systemd/system/postgresql@.service
chmod 0644 /etc/systemd/system/postgresql@.service
install -d -m 0755 /var/lib/outband
systemctl daemon-reload 2>/dev/null || true
systemctl enable outband-firstboot.service synapse.service nginx.service coturn.service \
  postgresql.service nftables.service unattended-upgrades.service ssh.service >/dev/null 2>&1

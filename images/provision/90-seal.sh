#!/bin/sh
# inputs: seal-gate.py extra-ca
# Seal, last on every path: remove everything that is per-machine, per-build or secret, then run
# the gate, which fails the bake if any private key, secret, authorized key or extra CA remains.
set -eu
# The build's own settings: no daemon starts, dpkg without fsync, a pinned bake's apt versions.
rm -f /usr/sbin/policy-rc.d /etc/dpkg/dpkg.cfg.d/outband-build /etc/apt/preferences.d/outband-pin
# Build-time trust goes: the image trusts Debian's CA list only.
rm -rf /usr/local/share/ca-certificates/outband-build
update-ca-certificates --fresh >/dev/null 2>&1
# Keys and logins of the builder.
rm -f /etc/ssh/ssh_host_*
rm -rf /root/.ssh
find /home -name authorized_keys -delete 2>/dev/null || true
rm -f /root/.bash_history /root/.python_history /root/.lesshst /root/.wget-hsts
find /home -name '.*_history' -delete 2>/dev/null || true
# apt lists and caches: stale in a week, and they bloat the image.
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
# cloud-init state from a build VM, and identity: each launch is a first boot.
rm -rf /var/lib/cloud/* /run/cloud-init 2>/dev/null || true
# The build machine's network, as cloud-init wrote it for that instance: each launch renders its own.
rm -f /etc/network/interfaces.d/50-cloud-init* /etc/systemd/network/10-cloud-init-*.network \
  /etc/netplan/50-cloud-init.yaml
# Empty, not "uninitialized": systemd still makes a new ID at each appliance's first start, but
# does not treat it as a "first boot" (machine-id(5)), whose preset pass over every unit file and
# systemd-firstboot cost seconds of emulated CPU before any unit starts and change nothing here
# (units are enabled at bake; locale, time zone and root password are set or locked).
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id /var/lib/systemd/random-seed /var/lib/systemd/credential.secret
echo outband > /etc/hostname
ln -sf ../run/systemd/resolve/stub-resolv.conf /etc/resolv.conf
# PostgreSQL's identity (system identifier, mock-authentication nonce, times) and WAL: each
# appliance's first start makes its own (/usr/local/lib/outband/pg-identity).
pg_lsclusters --no-header | while read -r version cluster _; do
  /usr/local/lib/outband/pg-identity clear "/var/lib/postgresql/$version/$cluster"
done
# Logs and temporary files.
find /var/log -type f -exec truncate -s 0 {} +
rm -rf /var/log/journal/* /root/.cache /var/tmp/* /var/cache/debconf/*-old /var/lib/dpkg/*-old
# Caches systemd would rebuild at every first boot (units with ConditionNeedsUpdate=): build them
# now, then mark /etc and /var as up to date with /usr. A later package upgrade re-arms them.
ldconfig
# ldconfig's aux-cache only speeds up its next run, and records inode numbers and times of this
# build (an image differing from its rebuild in nothing else): ld.so reads ld.so.cache, not this.
rm -f /var/cache/ldconfig/aux-cache
systemd-hwdb update
journalctl --update-catalog
# systemd-update-done stamps /usr's mtime into /etc/.updated and /var/.updated: the recipe's
# fixed date when the bake gives one (the disk clamps every time to it anyway), not the bake's.
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then touch -h -d "@$SOURCE_DATE_EPOCH" /usr; fi
/usr/lib/systemd/systemd-update-done
# The gate reads the build's extra CAs to prove they are gone; keep it in memory, drop the stage.
gate=$(cat "$OUTBAND_STAGE/seal-gate.py")
stage="$OUTBAND_STAGE"
forbid=""
for ca in "$stage"/extra-ca/*.crt; do [ -f "$ca" ] && forbid="$forbid $(base64 -w0 < "$ca")"; done
rm -rf "$stage" /tmp/* 2>/dev/null || true
# shellcheck disable=SC2046,SC2086 # the flags and their values are meant to split into words
python3 -c "$gate" --root / $(for b in $forbid; do printf -- '--forbid-ca-b64 %s ' "$b"; done)

#!/bin/sh
# inputs: files
# The appliance's own files: first-boot configurator and templates, units, firewall, hardening.
# Services are enabled here and started by first boot, once their configs exist.
set -eu
cp -r "$OUTBAND_STAGE/files/." /
chmod 0755 /usr/local/lib/outband/firstboot.py /usr/local/lib/outband/render-static \
  /usr/local/lib/outband/restore-ipv6ll /usr/local/lib/outband/pg-identity \
  /usr/local/lib/outband/recorder-account /usr/local/lib/outband/federation-team \
  /etc/letsencrypt/renewal-hooks/deploy/outband
chmod 0644 /usr/local/lib/outband/synapse-start.py /usr/local/lib/outband/contract.json \
  /usr/local/lib/outband/recorder.py
chmod 0644 /etc/systemd/system/*.service
install -d -o root -g root -m 0700 /etc/outband
# nginx's stream servers (TURN over TLS, rendered at first boot once the certificate exists) sit
# beside http{}, in the main context, which Debian's nginx.conf opens to modules only.
install -d -m 0755 /etc/nginx/streams-enabled
grep -qx 'include /etc/nginx/streams-enabled/\*.conf;' /etc/nginx/nginx.conf ||
  printf '\n# Outband: stream servers (TURN over TLS)\ninclude /etc/nginx/streams-enabled/*.conf;\n' >> /etc/nginx/nginx.conf
# The firewall and cloud-init's settings, from their templates and the contract's constants.
/usr/local/lib/outband/render-static
# One boot contract on every path, whatever the starting image had: the SSH user the launcher logs
# in as (cloud-init gives it the launch's keys), networkd + resolved for the network and names.
ssh_user=$(python3 -c 'import json; print(json.load(open("/usr/local/lib/outband/contract.json"))["constants"]["ssh_user"])')
id "$ssh_user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --groups adm,sudo \
  --comment "Outband operator" "$ssh_user"
usermod -p '*' "$ssh_user"
printf '# Outband: the operator (SSH keys only, no password).\n%s ALL=(ALL) NOPASSWD:ALL\n' "$ssh_user" \
  > /etc/sudoers.d/90-outband
chmod 0440 /etc/sudoers.d/90-outband
systemctl enable systemd-networkd.service systemd-resolved.service >/dev/null 2>&1
# PostgreSQL listens on localhost only, so it need not wait for network.target, which this image
# reaches only after cloud-init's local stage: first boot waits for the database. A drop-in cannot
# remove an ordering, so the unit is Debian's own minus that line, made from the installed one at
# each bake; the bake fails if Debian's unit no longer has that line (then revisit this).
vendor=/usr/lib/systemd/system/postgresql@.service
grep -qx 'After=network.target' "$vendor" || { echo "$vendor: no 'After=network.target' to drop" >&2; exit 1; }
sed '/^After=network.target$/d' "$vendor" > /etc/systemd/system/postgresql@.service
chmod 0644 /etc/systemd/system/postgresql@.service
# Each cluster's server started by systemd itself (Type=notify: PostgreSQL reports when it accepts
# connections) instead of through pg_ctlcluster, a Perl wrapper around pg_ctl: under emulation the
# wrapper took 6.0 s to a ready server where the server alone took 1.2 s. Same server, data
# directory and config file; the server still writes the PID file pg_lsclusters reads, and
# pg_ctlcluster start/stop/restart still work (they redirect to systemctl). Its log goes to the
# journal instead of /var/log/postgresql. One drop-in per cluster: %i cannot be split into the
# version and cluster name the paths need.
pg_lsclusters --no-header | while read -r version cluster _; do
  dropin=/etc/systemd/system/postgresql@$version-$cluster.service.d
  install -d -m 0755 "$dropin"
  cat > "$dropin/outband-direct.conf" <<EOF
[Service]
Type=notify
User=postgres
Group=postgres
# The cluster's own identifier, nonce and first WAL at its first start (the seal removed the
# image's); a no-op on every later start.
ExecStartPre=/usr/local/lib/outband/pg-identity make /var/lib/postgresql/$version/$cluster
ExecStart=
ExecStart=/usr/lib/postgresql/$version/bin/postgres -D /var/lib/postgresql/$version/$cluster -c config_file=/etc/postgresql/$version/$cluster/postgresql.conf
ExecStop=
ExecReload=
ExecReload=/bin/kill -HUP \$MAINPID
PIDFile=
# The postmaster restarts its own backends after one crashes; should it exit itself (a crash
# recovery that could not write, on a full disk), systemd starts it again, ever more slowly
# (5 s up to 1 min) and within the unit's start limit. Run directly, without pg_ctlcluster, a stop
# is systemd's own and never followed by a restart (Debian's unit leaves Restart= off for that).
Restart=on-failure
RestartSec=5
RestartSteps=5
RestartMaxDelaySec=1min
# Fast shutdown, as pg_ctlcluster's "-m fast": SIGINT to the server, which stops its own children.
KillSignal=SIGINT
KillMode=mixed
# The unit keeps the server away from the OOM killer; backends reset their own score, as under
# pg_ctlcluster.
Environment=PG_OOM_ADJUST_FILE=/proc/self/oom_score_adj PG_OOM_ADJUST_VALUE=0
EOF
  chmod 0644 "$dropin/outband-direct.conf"
done
install -d -m 0755 /var/lib/outband
systemctl daemon-reload 2>/dev/null || true
systemctl enable outband-firstboot.service synapse.service nginx.service coturn.service \
  postgresql.service nftables.service unattended-upgrades.service ssh.service \
  outband-restore-ipv6ll.service outband-recorder.service fail2ban.service >/dev/null 2>&1

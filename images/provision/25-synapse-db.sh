#!/bin/sh
# inputs: -
# Synapse's database schema, made at bake time. Made at first boot it is the longest part of
# Synapse's first start under emulation (~20 s, then minutes of background updates). An empty
# schema holds nothing of any one appliance: no users, no keys, no server name (Synapse checks
# the name only against existing users). The role has no password here; first boot sets it, so
# the only way in before launch is PostgreSQL's local peer authentication.
#
# Made so that two bakes write the same bytes (issue: reproducible bakes). Synapse's own tool runs
# in a throwaway cluster, where its timing shows (background updates, a task stamped with the time
# it ran); the image's cluster gets one restore of that schema, in one transaction, with nothing
# running on a timer: wal_level=minimal (no standby snapshots every 15 s, which move every later
# page's LSN), no autovacuum, no timed checkpoint. VACUUM FREEZE then sets every tuple's hint bits
# now rather than at whichever first read. The seal removes the cluster's identity and WAL
# (/usr/local/lib/outband/pg-identity says why); each appliance's first start makes its own.
set -eu
# shellcheck disable=SC2046 # version and cluster name, one word each
set -- $(pg_lsclusters --no-header | awk 'NR == 1 { print $1, $2 }')
version="$1" cluster="$2"
bin=/usr/lib/postgresql/$version/bin
quiet="-c wal_level=minimal -c max_wal_senders=0 -c autovacuum=off -c checkpoint_timeout=1d"
work=$(mktemp -d)
# The throwaway server's socket and log; Synapse (another user) connects through it.
chown postgres:postgres "$work"
chmod 0755 "$work"
throwaway="$work/pg"
cleanup() {
  if [ -f "$throwaway/postmaster.pid" ]; then runuser -u postgres -- "$bin/pg_ctl" -D "$throwaway" -s -m immediate stop || true; fi
  if [ -f "/var/lib/postgresql/$version/$cluster/postmaster.pid" ]; then
    pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" stop -m fast || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# 1. Synapse makes its schema in a throwaway cluster (a socket in $work, no TCP).
install -d -o postgres -g postgres -m 0700 "$throwaway"
runuser -u postgres -- "$bin/initdb" -D "$throwaway" --auth-local=peer --auth-host=reject -E UTF8 --locale=C.UTF-8 \
  --no-sync >/dev/null
runuser -u postgres -- "$bin/pg_ctl" -D "$throwaway" -w -s -l "$work/throwaway.log" \
  -o "-k $work -c listen_addresses= $quiet" start
runuser -u postgres -- psql -X -q -h "$work" -v ON_ERROR_STOP=1 -d postgres <<'SQL'
CREATE ROLE synapse LOGIN;
CREATE DATABASE synapse OWNER synapse ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
SQL
# A throwaway config: Synapse's schema tool reads a whole homeserver config. Its signing key is
# generated here and removed with $work (the seal gate fails the bake on any key left behind).
install -d -o synapse -g synapse -m 0700 "$work/synapse"
cat > "$work/synapse/homeserver.yaml" <<EOF
server_name: schema.invalid
signing_key_path: $work/synapse/signing.key
media_store_path: $work/synapse/media
report_stats: false
suppress_key_server_warning: true
database:
  name: psycopg2
  args: {user: synapse, dbname: synapse, host: $work}
EOF
runuser -u synapse -- /opt/synapse/bin/generate_signing_key -o "$work/synapse/signing.key"
runuser -u synapse -- /opt/synapse/bin/update_synapse_database \
  --database-config "$work/synapse/homeserver.yaml" --run-background-updates
# The one row that records when the tool ran: a task scheduled for "now". Scheduled for the
# recipe's date instead, it is just as due, and runs at the appliance's first start as before.
runuser -u synapse -- psql -X -q -h "$work" -v ON_ERROR_STOP=1 -d synapse \
  -c "UPDATE scheduled_tasks SET timestamp = ${SOURCE_DATE_EPOCH:?}000 WHERE status = 'scheduled'"
runuser -u synapse -- pg_dump -h "$work" --no-owner --no-privileges synapse > "$work/schema.sql"
runuser -u postgres -- "$bin/pg_ctl" -D "$throwaway" -s -m fast stop

# 2. The image's cluster: one restore, owned by the synapse role as Synapse made it.
# policy-rc.d keeps services down while the image is made: run this cluster directly, then stop it.
pg_ctlcluster --skip-systemctl-redirect -o "$quiet" "$version" "$cluster" start
runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres <<'SQL'
DROP DATABASE IF EXISTS synapse;
SELECT 'CREATE ROLE synapse LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'synapse')\gexec
CREATE DATABASE synapse OWNER synapse ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
SQL
runuser -u synapse -- psql -X -q -1 -v ON_ERROR_STOP=1 -d synapse -f - < "$work/schema.sql" >/dev/null
runuser -u postgres -- vacuumdb --all --freeze --quiet
pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" stop -m fast

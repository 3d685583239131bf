#!/bin/sh
# inputs: -
# Synapse's database schema, made at bake time. Made at first boot it is the longest part of
# Synapse's first start under emulation (~20 s, then minutes of background updates). An empty
# schema holds nothing of any one appliance: no users, no keys, no server name (Synapse checks
# the name only against existing users). The role has no password here; first boot sets it, so
# the only way in before launch is PostgreSQL's local peer authentication.
set -eu
# shellcheck disable=SC2046 # version and cluster name, one word each
set -- $(pg_lsclusters --no-header | awk 'NR == 1 { print $1, $2 }')
version="$1" cluster="$2"
# policy-rc.d keeps services down while the image is made: run this cluster directly, then stop it.
pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start
work=$(mktemp -d)
cleanup() {
  rm -rf "$work"
  pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" stop -m fast
}
trap cleanup EXIT
runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -f - <<'SQL'
DROP DATABASE IF EXISTS synapse;
SELECT 'CREATE ROLE synapse LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'synapse')\gexec
CREATE DATABASE synapse OWNER synapse ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
SQL
# A throwaway config: Synapse's schema tool reads a whole homeserver config. Its signing key is
# generated here and removed with $work (the seal gate fails the bake on any key left behind).
chown synapse:synapse "$work"
cat > "$work/homeserver.yaml" <<EOF
server_name: schema.invalid
signing_key_path: $work/signing.key
media_store_path: $work/media
report_stats: false
suppress_key_server_warning: true
database:
  name: psycopg2
  args: {user: synapse, dbname: synapse, host: /var/run/postgresql}
EOF
runuser -u synapse -- /opt/synapse/bin/generate_signing_key -o "$work/signing.key"
runuser -u synapse -- /opt/synapse/bin/update_synapse_database \
  --database-config "$work/homeserver.yaml" --run-background-updates

#!/bin/sh
# inputs: lock/synapse.txt
# Synapse in its own venv, exactly the locked wheels, hash-checked, never compiled here.
# psycopg2 has no wheel: Debian's python3-psycopg2 comes in through the system site-packages.
set -eu
id synapse >/dev/null 2>&1 || useradd --system --user-group --home-dir /var/lib/synapse \
  --shell /usr/sbin/nologin synapse
install -d -o synapse -g synapse -m 0750 /var/lib/synapse /var/lib/synapse/media
install -d -o root -g synapse -m 0750 /etc/synapse
# Empty until first boot writes the launch's secrets; here from the bake on because auditd's rule on
# reads of it (files/etc/audit/rules.d/outband.rules) needs the directory when the rules load.
install -d -o root -g synapse -m 0750 /etc/synapse/secrets
rm -rf /opt/synapse
python3 -m venv --system-site-packages /opt/synapse
PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/synapse/bin/pip install --quiet --no-deps --no-compile \
  --require-hashes --only-binary=:all: --ignore-installed -r "$OUTBAND_STAGE/lock/synapse.txt"
# Byte-compiled once, here, on every CPU (pip compiles file by file) and without the sources'
# times in the .pyc files (unchecked-hash: two bakes write the same bytes, and no import checks a
# source it never changes: nothing changes this venv after the bake). -f: the interpreter that runs
# compileall has already imported setuptools' _distutils_hack (its .pth) and written that .pyc
# with the source's install time, which compileall would otherwise keep as up to date.
/opt/synapse/bin/python -m compileall -f -q -j 0 --invalidation-mode unchecked-hash /opt/synapse/lib
/opt/synapse/bin/python -c 'import synapse, psycopg2; print("synapse", synapse.__version__)'
# Synapse's own dependency check, here once (synapse-start.py skips it at each start): the venv is
# never changed after this bake. Also the postgres extra: psycopg2 is Debian's, not the lock's.
/opt/synapse/bin/python -c 'from synapse.util.check_dependencies import check_requirements as c; c(); c("postgres")'

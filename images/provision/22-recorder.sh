#!/bin/sh
# inputs: lock/recorder.txt
# The case recorder's Python: matrix-nio + vodozemac in their own venv, exactly the locked wheels,
# hash-checked, never compiled here. peewee and atomicwrites (no wheels) are Debian's, from
# 10-packages.sh, through the system site-packages; so is cryptography (the case key's signatures).
set -eu
id outband-recorder >/dev/null 2>&1 || useradd --system --user-group --home-dir /var/lib/outband/recorder \
  --shell /usr/sbin/nologin outband-recorder
install -d -o root -g root -m 0755 /var/lib/outband
install -d -o outband-recorder -g outband-recorder -m 0700 /var/lib/outband/recorder
# The case folder: the operator reads it through sudo, nobody else.
install -d -o outband-recorder -g outband-recorder -m 0750 /var/lib/outband/case
install -d -o outband-recorder -g outband-recorder -m 0700 /etc/outband/recorder
rm -rf /opt/recorder
python3 -m venv --system-site-packages /opt/recorder
PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/recorder/bin/pip install --quiet --no-deps --no-compile \
  --require-hashes --only-binary=:all: --ignore-installed -r "$OUTBAND_STAGE/lock/recorder.txt"
# As for Synapse (20-synapse.sh): compiled once, reproducibly.
/opt/recorder/bin/python -m compileall -f -q -j 0 --invalidation-mode unchecked-hash /opt/recorder/lib
/opt/recorder/bin/python -c 'import nio, vodozemac, peewee, atomicwrites, cryptography; from nio.crypto import ENCRYPTION_ENABLED; assert ENCRYPTION_ENABLED; print("matrix-nio", nio.__version__ if hasattr(nio, "__version__") else "ok")'

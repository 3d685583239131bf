#!/bin/sh
# inputs: extra-ca
# Trust extra CA certificates for the duration of the build only (TLS-inspecting proxies between
# the builder and PyPI). 90-seal removes them and the gate proves it.
set -eu
ls "$OUTBAND_STAGE"/extra-ca/*.crt >/dev/null 2>&1 || exit 0
mkdir -p /usr/local/share/ca-certificates/outband-build
cp "$OUTBAND_STAGE"/extra-ca/*.crt /usr/local/share/ca-certificates/outband-build/
update-ca-certificates >/dev/null

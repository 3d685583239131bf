#!/bin/sh
# inputs: webclient.tar
# The web client (Element web release or the offline Hydrogen build), static files only. Its
# config.json is rendered per launch by the first-boot configurator.
set -eu
rm -rf /var/www/webclient
install -d -m 0755 /var/www/webclient /var/www/acme
tar -xf "$OUTBAND_STAGE/webclient.tar" -C /var/www/webclient --no-same-owner --no-same-permissions
rm -f /var/www/webclient/config.json /var/www/webclient/config.sample.json
chmod -R u=rwX,go=rX /var/www/webclient

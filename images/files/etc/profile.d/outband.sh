# An operator's login shell on the appliance: ended after 15 idle minutes (lynis SHLL-6220), and no
# core dumps from what it runs (limits.d/outband.conf sets the hard limit; lynis KRNL-5820).
TMOUT=900
readonly TMOUT
export TMOUT
# shellcheck disable=SC3045 # dash and bash, the shells that read this, both have it
ulimit -c 0

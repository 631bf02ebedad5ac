#!/bin/sh
# Heartbeat resource script and agent verb for an overlay address (the database writer or the
# storage NFS address): `pypi-overlay ADDRESS take|release|status` (start/stop are aliases).
set -eu
# shellcheck source=/dev/null
. "$PYPI_LIB"

load_config
[ $# -eq 2 ] || die "usage: pypi-overlay ADDRESS take|release|status"
cmd_overlay "$1" "$2"

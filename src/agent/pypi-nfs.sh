#!/bin/sh
# Heartbeat resource script of the storage pair's NFS server: `pypi-nfs start|stop|status`.
# Start lays out the package volume (root is root on the DRBD primary's local mount) and exports it.
set -eu
# shellcheck source=/dev/null
. "$PYPI_LIB"

cmd_nfs() {
  case $1 in
    start)
      ensure_package_layout "$PYPI_VOLUME_MOUNT"
      svc_start nfs-server && exportfs -ra
      ;;
    stop) svc_stop nfs-server ;;
    status) if svc_running nfs-server; then echo running; else echo stopped; fi ;;
    *) die "nfs: start|stop|status" ;;
  esac
}

load_config
[ $# -eq 1 ] || die "usage: pypi-nfs start|stop|status"
cmd_nfs "$1"

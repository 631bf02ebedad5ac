#!/bin/sh
# Heartbeat resource script of the storage pair's NFS server: `pypi-nfs start|stop|status`.
# Start lays out the package volume (root is root on the DRBD primary's local mount) and exports it.
set -eu
# shellcheck source=/dev/null
. "$PYPI_LIB"

# The lab's kernel has no nfsd: there the shared directory is the export, and this resource lays
# it out and records that it serves it.
LAB_NFS_MARK=/run/pypi-nfs.serving

cmd_nfs() {
  case $PYPI_BACKEND:$1 in
    *:start) ensure_package_layout "$PYPI_VOLUME_MOUNT" ;;
  esac
  case $PYPI_BACKEND:$1 in
    aws:start) svc_start nfs-server && exportfs -ra ;;
    aws:stop) svc_stop nfs-server ;;
    aws:status) if svc_running nfs-server; then echo running; else echo stopped; fi ;;
    lab:start) : >"$LAB_NFS_MARK" ;;
    lab:stop) rm -f "$LAB_NFS_MARK" ;;
    lab:status) if [ -e "$LAB_NFS_MARK" ]; then echo running; else echo stopped; fi ;;
    *) die "nfs: start|stop|status" ;;
  esac
}

load_config
[ $# -eq 1 ] || die "usage: pypi-nfs start|stop|status"
cmd_nfs "$1"

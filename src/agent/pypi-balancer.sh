#!/bin/sh
# pypi-balancer: a balancer's own work. The nginx watchdog Heartbeat respawns, the upload
# backends in HAProxy, and the balancer's place at boot.
set -eu
# shellcheck source=/dev/null
. "$PYPI_LIB"

# ---------------------------------------------------------------- nginx watchdog

# Heartbeat v1 watches only its peer, not the resources: a dead nginx under a floating IP would
# go unnoticed. Heartbeat runs this loop (ha.cf `respawn`) and restarts it if it exits. It
# restarts nginx, and if nginx cannot run here it hands this node's floating IPs to the peer.
# An operator pauses it (e.g. to stop nginx on purpose) by creating PYPI_WATCH_PAUSE.
cmd_watch() {
  # Heartbeat does not respawn a client that exits 100: a node without nginx has nothing to watch.
  case " ${PYPI_SERVICES:-} " in
    *" nginx "*) ;;
    *)
      log "watch: nginx is not a service of $PYPI_NODE; nothing to watch"
      exit 100
      ;;
  esac
  watch_pause=${PYPI_WATCH_PAUSE:-/run/pypi-node-watch.pause}
  watch_interval=${PYPI_WATCH_INTERVAL:-0.5}
  watch_standby=${PYPI_HB_STANDBY:-/usr/share/heartbeat/hb_standby}
  watch_takeover=${PYPI_HB_TAKEOVER:-/usr/share/heartbeat/hb_takeover}
  watch_handed=no
  while :; do
    sleep "$watch_interval"
    [ ! -e "$watch_pause" ] || continue
    if svc_running nginx; then
      # Healthy again after a hand-off: take the home addresses back, as auto_failback would.
      if [ "$watch_handed" = yes ] && grep -Eq '^auto_failback[[:space:]]+on' "$PYPI_HA_CF"; then
        log "watch: nginx is back; taking this node's floating IPs back"
        "$watch_takeover" local >&2 || log "watch: $watch_takeover failed"
      fi
      watch_handed=no
      continue
    fi
    log "watch: nginx is not running; starting it"
    if svc_start nginx >&2 && svc_running nginx; then
      log "watch: nginx started"
      continue
    fi
    [ "$watch_handed" = no ] || continue
    log "watch: nginx does not start; handing the floating IPs to the peer"
    "$watch_standby" all >&2 || log "watch: $watch_standby failed"
    watch_handed=yes
  done
}

# ---------------------------------------------------------------- upload backends

cmd_upload_backend() {
  action=$1 server=$2
  case $action in
    enable | disable) ;;
    *) die "upload-backend: enable|disable NODE" ;;
  esac
  printf '%s server %s/%s\n' "$action" "$PYPI_UPLOAD_BACKEND" "$server" |
    socat - "UNIX-CONNECT:$PYPI_HAPROXY_SOCKET"
  printf 'show servers state %s\n' "$PYPI_UPLOAD_BACKEND" | socat - "UNIX-CONNECT:$PYPI_HAPROXY_SOCKET" |
    awk -v s="$server" '$4 == s { print s, "admin_state=" $7, "op_state=" $6 }'
}

cmd_upload_backends() {
  printf 'show servers state %s\n' "$PYPI_UPLOAD_BACKEND" | socat - "UNIX-CONNECT:$PYPI_HAPROXY_SOCKET" |
    awk 'NR > 2 && NF > 6 { state = ($6 == 2) ? "UP" : "DOWN"; if ($7 != 0) state = "MAINT"; print $4, state }'
}

upload_backend_up() { cmd_upload_backends | grep -qx "$1 UP"; }

# HAProxy marks a server up after `rise` good checks; poll for it rather than guess the time.
cmd_upload_backends_wait() {
  wait_until "HAProxy seeing $1 up" 60 upload_backend_up "$1"
  cmd_upload_backends
}

# ---------------------------------------------------------------- converge

# After apply, at every boot: this node's home floating IPs taken back if nobody holds them,
# and every service running.
cmd_balancer_converge() {
  for triple in $PYPI_FIPS; do "$PYPI_FIP_SCRIPT" "${triple%%=*}" reclaim; done
  for svc in $PYPI_SERVICES; do svc_running "$svc" || die "converge: $svc is not running"; done
}

usage() {
  cat >&2 <<'USAGE'
usage: pypi-balancer COMMAND
  converge                          at every boot: reclaim home floating IPs nobody holds; services up
  watch                             keep nginx running under the floating IPs (Heartbeat respawns it)
  upload-backend enable|disable NODE
  upload-backends [--wait NODE]     the upload backends as HAProxy sees them; --wait: until NODE is up
USAGE
  exit 2
}

main() {
  [ $# -ge 1 ] || usage
  command=$1
  shift
  load_config
  [ "$PYPI_ROLE" = balancer ] || die "pypi-balancer runs on balancers, not on a $PYPI_ROLE"
  case $command in
    converge) cmd_balancer_converge ;;
    watch) cmd_watch ;;
    upload-backend) [ $# -eq 2 ] || usage && cmd_upload_backend "$1" "$2" ;;
    upload-backends)
      case $# in
        0) cmd_upload_backends ;;
        2) [ "$1" = --wait ] || usage && cmd_upload_backends_wait "$2" ;;
        *) usage ;;
      esac
      ;;
    *) usage ;;
  esac
}

main "$@"

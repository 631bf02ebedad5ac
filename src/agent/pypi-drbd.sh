#!/bin/sh
# The storage pair's DRBD resource: its first bring-up (`pypi-drbd up`, from pypi-app converge)
# and its handlers (`pypi-drbd fence-peer|after-resync-target`, run by drbdadm with DRBD_RESOURCE
# and DRBD_PEER set, without node.env). fence-peer reports a peer Heartbeat holds dead,
# and has Heartbeat's dopd outdate a live one (why: dopdHaCfLines in src/render/drbd.ts).
#
# fence-peer exit codes, as DRBD 8.4 reads them (drbd_nl.c, conn_try_outdate_peer):
#   3  the peer's disk is Inconsistent: nothing on it to fence
#   4  the peer's disk is Outdated (dopd ran `drbdadm outdate` there)
#   5  the peer is dead: DRBD marks it Outdated if this disk is UpToDate
#   6  the peer is Primary: DRBD outdates this node's disk instead
#   7  the peer was shot by STONITH: never, there is none here
#   anything else means "helper broken": DRBD changes no state, so a disconnected node stays
#   Secondary (under resource-only a Primary keeps writing).
set -eu
# shellcheck source=/dev/null
. "$PYPI_LIB"

# The kernel runs drbdadm with PATH=/sbin:/usr/sbin:/bin:/usr/bin; dopd's client lives here.
PATH=$PATH:/usr/libexec/heartbeat
OUTDATER_TIMEOUT=5
OUTDATE_TRIES=4

# Handlers have no terminal: the journal keeps what they say.
note() {
  logger -t pypi-drbd -p daemon.notice -- "$*" 2>/dev/null || true
  log "$*"
}

# Heartbeat's view of the peer: dead, a live state (active, up, init), or empty if unknown.
peer_status() { cl_status nodestatus "$peer" 2>/dev/null || true; }

fence_peer() {
  res=${DRBD_RESOURCE:-} peer=${DRBD_PEER:-}
  if [ -z "$res" ] || [ -z "$peer" ]; then
    note "fence-peer: DRBD_RESOURCE or DRBD_PEER unset; drbdadm sets both"
    exit 1
  fi
  # A peer Heartbeat declared dead is answered here, without dopd: that is the failover path.
  # drbd-peer-outdater's own 5 is no proof of death: it also says 5 when it cannot reach its
  # dopd, and Debian's has crashed about a second after every request it served, to be
  # respawned by Heartbeat a second later; so a live peer is asked again, 1 s apart.
  try=1
  while :; do
    status=$(peer_status)
    case $status in
      dead)
        note "fence-peer $res: Heartbeat has $peer dead (exit 5)"
        exit 5
        ;;
      "")
        note "fence-peer $res: Heartbeat does not answer for $peer; state unknown"
        exit 1
        ;;
    esac
    rc=0
    err=$(drbd-peer-outdater -t "$OUTDATER_TIMEOUT" -r "$res" -p "$peer" 2>&1 >/dev/null) || rc=$?
    case $rc in
      3) what="has an Inconsistent disk" ;;
      4) what="is Outdated" ;;
      6) what="is Primary: DRBD outdates this node's disk" ;;
      *) what= ;;
    esac
    if [ -n "$what" ]; then
      note "fence-peer $res: $peer $what (exit $rc)"
      exit "$rc"
    fi
    if [ "$try" -ge "$OUTDATE_TRIES" ]; then
      note "fence-peer $res: $peer is $status in Heartbeat but dopd did not outdate it (last exit $rc${err:+, $err}); state unknown"
      exit 1
    fi
    try=$((try + 1))
    sleep 1
  done
}

# DRBD clears Outdated by the resync itself (nothing to undo, unlike a CIB constraint); this
# records when the fenced node became eligible to take over again.
after_resync_target() {
  res=${DRBD_RESOURCE:-}
  [ -n "$res" ] || die "after-resync-target: DRBD_RESOURCE unset; drbdadm sets it"
  note "after-resync-target $res: resync done, disk states $(drbdadm dstate "$res" 2>/dev/null || echo unknown)"
}

# DRBD's first bring-up on the storage pair: metadata on a new disk, attach and connect, and
# the first full sync forced from the home node only, once, while both disks are new.
drbd_up() {
  load_config
  [ "$PYPI_STORAGE_ROLE" != none ] || die "up: $PYPI_NODE is not in the storage pair"
  if [ "$PYPI_BACKEND" = lab ]; then
    log "up: the lab's kernel has no DRBD; the shared directory stands in for the volume"
    return 0
  fi
  wait_until "data volume $PYPI_DATA_DEVICE" "${PYPI_VOLUME_WAIT_SECONDS:-300}" test -b "$PYPI_DATA_DEVICE"
  modprobe drbd
  if ! drbdadm dump-md "$PYPI_DRBD_RESOURCE" >/dev/null 2>&1; then
    [ -z "$(wipefs -n -O TYPE --noheadings "$PYPI_DATA_DEVICE" 2>/dev/null)" ] ||
      die "$PYPI_DATA_DEVICE carries data but no DRBD metadata; not touching it"
    drbdadm -- --force create-md "$PYPI_DRBD_RESOURCE" >&2
  fi
  drbdadm cstate "$PYPI_DRBD_RESOURCE" >/dev/null 2>&1 || drbdadm up "$PYPI_DRBD_RESOURCE"
  synced="$PYPI_AGENT_STATE/drbd-initial-sync"
  if [ "$PYPI_STORAGE_ROLE" = home ] && [ ! -e "$synced" ]; then
    wait_until "the DRBD peer to connect" 900 sh -c "drbdadm cstate $PYPI_DRBD_RESOURCE | grep -qx Connected"
    case $(drbdadm dstate "$PYPI_DRBD_RESOURCE") in
      Inconsistent/Inconsistent)
        log "up: both disks are new; forcing the first sync from $PYPI_NODE"
        drbdadm primary --force "$PYPI_DRBD_RESOURCE"
        mkfs.ext4 -q -L pypi-packages "/dev/drbd$PYPI_DRBD_MINOR" >&2
        drbdadm secondary "$PYPI_DRBD_RESOURCE"
        ;;
    esac
    : >"$synced"
    # Heartbeat may have tried the group before the disk existed; let it try again.
    svc_reload heartbeat
  fi
}

case ${1:-} in
  up) drbd_up ;;
  fence-peer) fence_peer ;;
  after-resync-target) after_resync_target ;;
  *) die "usage: pypi-drbd up | fence-peer|after-resync-target (run by drbdadm)" ;;
esac

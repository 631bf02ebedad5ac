#!/bin/sh
# pypi-volume: the filesystems of this node. Their use for the health model's runbooks, and an
# online grow after an EBS volume was made larger.
set -eu
# shellcheck source=/dev/null
. "$PYPI_LIB"

# Use of every filesystem the health model watches, and the largest directories on the fullest.
cmd_report() {
  for mount in / ${PYPI_DATA_MOUNT:-} ${PYPI_VOLUME_MOUNT:-}; do
    mountpoint -q "$mount" 2>/dev/null || continue
    df -P "$mount" | awk -v m="$mount" 'NR == 2 { printf "disk\t%s\t%s used\t%d MB free\n", m, $5, $4 / 1024 }'
    du -x -a -m -d 2 "$mount" 2>/dev/null | sort -rn | head -n 5 | awk '{ printf "largest\t%s MB\t%s\n", $1, $2 }'
  done
}

# After a volume grew (aws ec2 modify-volume): grow the partition and filesystem on it, online.
cmd_grow() {
  case $1:$PYPI_ROLE in
    root:*)
      dev=$(findmnt -n -o SOURCE /)
      disk=$(lsblk -p -n -o PKNAME "$dev" | head -n 1)
      part=$(cat "/sys/class/block/${dev##*/}/partition" 2>/dev/null || echo "")
      # growpart exits 1 for NOCHANGE: the partition already fills the disk.
      if [ -n "$disk" ] && [ -n "$part" ]; then growpart "$disk" "$part" >&2 || true; fi
      resize2fs "$dev" >&2 || die "resize2fs $dev failed"
      ;;
    data:db)
      mountpoint -q "$PYPI_DATA_MOUNT" || die "$PYPI_DATA_MOUNT is not mounted"
      dev=$(findmnt -n -o SOURCE "$PYPI_DATA_MOUNT")
      resize2fs "$dev" >&2 || die "resize2fs $dev failed"
      ;;
    data:app)
      # DRBD first (on its primary, once both backing volumes grew), then the filesystem on it.
      mountpoint -q "$PYPI_VOLUME_MOUNT" || die "$PYPI_VOLUME_MOUNT is not mounted here: run this on the storage primary"
      drbdadm resize "$PYPI_DRBD_RESOURCE" >&2 || die "drbdadm resize $PYPI_DRBD_RESOURCE failed"
      dev=$(findmnt -n -o SOURCE "$PYPI_VOLUME_MOUNT")
      resize2fs "$dev" >&2 || die "resize2fs $dev failed"
      ;;
    *) die "volume-grow: data|root (a $PYPI_ROLE has no data volume)" ;;
  esac
  cmd_report
}

usage() {
  cat >&2 <<'USAGE'
usage: pypi-volume COMMAND
  report                use of the watched filesystems and their largest directories
  grow data|root        grow the filesystem of a grown EBS volume, online
USAGE
  exit 2
}

main() {
  [ $# -ge 1 ] || usage
  command=$1
  shift
  load_config
  case $command in
    report) cmd_report ;;
    grow) [ $# -eq 1 ] || usage && cmd_grow "$1" ;;
    *) usage ;;
  esac
}

main "$@"

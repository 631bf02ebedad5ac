#!/bin/sh
# pypi-app: an app server's own work. Its place in the system at boot (the storage pair's DRBD
# disk, the package volume, the writer address, the schema), the checks the runbooks run, and the
# index app's jobs run as the app's user with the environment Apache gives it.
set -eu
# shellcheck source=/dev/null
. "$PYPI_LIB"

# A bad rm may have taken the directories too: the layout comes first, as on a new volume. Laid
# out on the volume itself where it is mounted (the storage primary, where the runbook runs): root
# cannot create directories through the NFS export (root_squash).
cmd_files_restore() {
  if mountpoint -q "$PYPI_VOLUME_MOUNT"; then ensure_package_layout "$PYPI_VOLUME_MOUNT" >/dev/null; fi
  app_cli restore-files "$@"
}

# Runs the index app's CLI as www-data with the environment Apache gives it.
app_cli() {
  (
    set -a
    # shellcheck disable=SC1090
    . "$PYPI_APP_ENV"
    set +a
    exec runuser -u www-data -- "$PYPI_APP_SCRIPT" "$@"
  )
}

# Run on an app server: the writer address must reach a primary that accepts writes.
cmd_writer_check() {
  conn="host=$PYPI_OVERLAY_DB port=$PYPI_PG_PORT dbname=$PYPI_PG_DATABASE user=$PYPI_PG_APP_USER passfile=$PYPI_APP_PASSFILE connect_timeout=3"
  in_recovery=$(psql -X -At -d "$conn" -c 'SELECT pg_is_in_recovery()') || die "writer $PYPI_OVERLAY_DB unreachable"
  [ "$in_recovery" = f ] || die "writer $PYPI_OVERLAY_DB answers but is in recovery"
  echo "writer $PYPI_OVERLAY_DB is primary"
}

cmd_storage_check() {
  probe="$PYPI_PACKAGE_ROOT/.pypi-node-probe.$PYPI_NODE"
  mountpoint -q "$PYPI_PACKAGE_ROOT" || [ "$PYPI_BACKEND" = lab ] || die "$PYPI_PACKAGE_ROOT is not mounted"
  date >"$probe" || die "$PYPI_PACKAGE_ROOT is not writable"
  rm -f "$probe"
  echo "storage $PYPI_PACKAGE_ROOT writable"
}

# ---------------------------------------------------------------- converge

# After apply, at every boot: the storage pair's disk, the package volume, the writer, the schema.
cmd_app_converge() {
  # Only the storage pair carries the DRBD tool.
  drbd_tool=${PYPI_DRBD_TOOL:-}
  if [ -n "$drbd_tool" ]; then "$drbd_tool" up; fi
  # The package root is the storage pair's NFS export on AWS; the lab binds a shared directory.
  if [ -n "$PYPI_PACKAGE_MOUNT_UNIT" ]; then systemctl enable --now "$PYPI_PACKAGE_MOUNT_UNIT"; fi
  wait_until "the package volume laid out at $PYPI_PACKAGE_ROOT" 900 test -d "$PYPI_PACKAGE_ROOT/incoming"
  wait_until "a writable primary at $PYPI_OVERLAY_DB" 900 cmd_writer_check
  # Every app server runs the migrations; an advisory lock serialises them and a done one is a no-op.
  app_cli migrate >&2
  echo "converge: $PYPI_NODE serves the index"
}

usage() {
  cat >&2 <<'USAGE'
usage: pypi-app COMMAND
  converge              at every boot: the storage pair's disk, the package volume, the writer, the schema
  writer-check          the writer address reaches a writable primary
  storage-check         the package root is mounted and writable
  package-layout DIR    create the package volume's directories and ownership
  migrate | register    the index app's schema migrations / upload registration
  files-copy            copy new package files to the copy bucket
  files-restore [--all] restore package files from the copies
USAGE
  exit 2
}

main() {
  [ $# -ge 1 ] || usage
  command=$1
  shift
  load_config
  [ "$PYPI_ROLE" = app ] || die "pypi-app runs on app servers, not on a $PYPI_ROLE"
  case $command in
    converge) cmd_app_converge ;;
    writer-check) cmd_writer_check ;;
    storage-check) cmd_storage_check ;;
    package-layout) [ $# -eq 1 ] || usage && ensure_package_layout "$1" ;;
    migrate) app_cli migrate ;;
    register) app_cli register ;;
    files-copy) app_cli copy-files ;;
    files-restore) cmd_files_restore "$@" ;;
    *) usage ;;
  esac
}

main "$@"

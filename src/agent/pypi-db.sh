#!/bin/sh
# pypi-db: the database tool. First bring-up of a db node, fencing, promotion, re-attachment
# and the synchronous switch. The runbooks call it through `pypi-node db-…` or directly.
set -eu
# shellcheck source=/dev/null
. "$PYPI_LIB"

install_standby_files() {
  case $PYPI_PG_DIALECT in
    standby.signal) install -o postgres -g postgres -m 0600 /dev/null "$PYPI_PG_DATA/standby.signal" ;;
    recovery.conf) install -o postgres -g postgres -m 0600 "$PYPI_PG_RECOVERY_TEMPLATE" "$PYPI_PG_DATA/recovery.conf" ;;
  esac
}

# Roles, grants, database and slot of a new primary. Every statement is idempotent; commits are
# local because a synchronous primary has no standby yet.
pg_bootstrap_sql() {
  pg_repl_pw=$(secret_value "${PYPI_SECRET_PG_REPLICATION:?}") || die "cannot read the replication password"
  pg_app_pw=$(secret_value "${PYPI_SECRET_PG_APP:?}") || die "cannot read the app password"
  pg_repl=$(pg_literal "$PYPI_PG_REPL_USER")
  pg_app=$(pg_literal "$PYPI_PG_APP_USER")
  pg_slot=$(pg_literal "$PYPI_PG_SLOT")
  cat <<SQL
SET synchronous_commit = local;
SELECT format('CREATE ROLE %I', $pg_repl) WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $pg_repl)
\gexec
SELECT format('ALTER ROLE %I WITH REPLICATION LOGIN PASSWORD %L', $pg_repl, $(pg_literal "$pg_repl_pw"))
\gexec
SELECT format('GRANT EXECUTE ON FUNCTION %s TO %I', f, $pg_repl) FROM unnest(ARRAY[
  'pg_catalog.pg_ls_dir(text, boolean, boolean)',
  'pg_catalog.pg_stat_file(text, boolean)',
  'pg_catalog.pg_read_binary_file(text)',
  'pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)']) AS f
\gexec
SELECT format('CREATE ROLE %I', $pg_app) WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $pg_app)
\gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOREPLICATION PASSWORD %L', $pg_app, $(pg_literal "$pg_app_pw"))
\gexec
-- The app's health check reads the standby's lag from pg_stat_replication (10+).
SELECT format('GRANT pg_monitor TO %I', $pg_app) WHERE current_setting('server_version_num')::int >= 100000
\gexec
SELECT format('CREATE DATABASE %I OWNER %I', $(pg_literal "$PYPI_PG_DATABASE"), $pg_app)
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = $(pg_literal "$PYPI_PG_DATABASE"))
\gexec
SELECT pg_create_physical_replication_slot($pg_slot, true)
  WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $pg_slot);
SQL
}

# Start a primary's cluster; callers have checked the peer and the writer route first.
start_checked_primary() {
  if svc_running postgresql; then return 0; fi
  PYPI_PG_ROLE_CHECKED=1 && export PYPI_PG_ROLE_CHECKED
  svc_start postgresql
  unset PYPI_PG_ROLE_CHECKED
}

db_init_primary() {
  if [ ! -s "$PYPI_PG_DATA/PG_VERSION" ]; then
    # No superuser password: the postgres role logs in by peer auth on the socket only.
    pg initdb -D "$PYPI_PG_DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  fi
  start_checked_primary
  svc_running postgresql || die "postgresql did not start"
  [ "$(pg_in_recovery)" = f ] || die "$PYPI_NODE runs as a standby; refusing to bootstrap it as primary"
  pg_bootstrap_sql | PGOPTIONS='-c synchronous_commit=local' pg_sql postgres >/dev/null
}

db_init_standby() {
  if [ -s "$PYPI_PG_DATA/PG_VERSION" ] && ! pg_is_standby_dir; then
    # A cluster the package created on its own is not a copy of the primary: keep it aside.
    if svc_running postgresql; then svc_stop postgresql; fi
    pg_aside="$PYPI_PG_DATA.pre-db-init.$(date +%s)"
    mv "$PYPI_PG_DATA" "$pg_aside"
    log "moved the existing cluster to $pg_aside"
  fi
  if [ ! -s "$PYPI_PG_DATA/PG_VERSION" ]; then
    rm -rf "$PYPI_PG_DATA"
    install -d -o postgres -g postgres -m 0700 "$PYPI_PG_DATA"
    pg_client pg_basebackup -D "$PYPI_PG_DATA" -X stream -S "$PYPI_PG_SLOT" -c fast \
      -d "$(pg_peer_conninfo)" || die "pg_basebackup from $PYPI_PG_PEER failed"
    install_standby_files
  fi
  svc_running postgresql || svc_start postgresql
  [ "$(pg_in_recovery)" = t ] || die "standby $PYPI_NODE is not in recovery"
}

# ---------------------------------------------------------------- backups (pgBackRest)

pgbr() {
  runuser -u postgres -- pgbackrest --config="$PYPI_PGBR_CONF" --stanza="$PYPI_PGBR_STANZA" "$@"
}

# One field of the repository's `info --output=json` (its first and only stanza), by a Python
# expression over `s`; empty when absent. python3 is on every node (cloud-init runs on it).
# `info` exits 0 even when it cannot read the repository: only its status codes 0 (ok), 1 (no
# stanza yet) and 2 (no valid backup) are an answer; anything else fails, so a repository that
# does not answer is never taken for an empty one.
pgbr_info_field() {
  pgbr --output=json info | python3 -c '
import json, sys
s = json.load(sys.stdin)[0]
if s.get("status", {}).get("code") not in (0, 1, 2) or any(
    r.get("status", {}).get("code") not in (0, 1, 2) for r in s.get("repo", [])
):
    sys.exit("pgbackrest info: %s" % s.get("status", {}).get("message", "no status"))
try:
    v = eval(sys.argv[1], {}, {"s": s})
except (IndexError, KeyError, TypeError):
    v = ""
print("" if v is None else v)
' "$1"
}

# The repository answers; it holds this many backups (0 when the stanza does not exist yet).
pgbr_backup_count() { pgbr_info_field 'len(s.get("backup", []))'; }

# The stanza exists and takes this cluster's WAL: idempotent, and cheap once done.
pgbr_stanza() {
  pgbr stanza-create >&2 || return 1
  pgbr check >&2
}

# After a primary starts: its stanza, and a first full backup when the repository has none, so
# point-in-time recovery is possible from the first registration on. A repository that does not
# answer must not keep the node from serving: the status reports it and the alarms fire.
pgbr_primary_ready() {
  if ! pgbr_stanza; then
    log "backups: stanza $PYPI_PGBR_STANZA not ready (repository or archive_command failing); see pypi-node status"
    return 0
  fi
  if [ "$(pgbr_backup_count)" = 0 ]; then
    pgbr --type=full backup >&2 || log "backups: the first full backup failed; the timer retries"
  fi
}

cmd_db_backup() {
  case ${1:-} in full | diff | incr) ;; *) die "db-backup: full|diff|incr" ;; esac
  bk_role=""
  if svc_running postgresql; then bk_role=$(pg_in_recovery) || die "backup $1: cannot ask postgres for its role"; fi
  if [ "$bk_role" != f ]; then
    echo "backup $1: skipped, $PYPI_NODE is not the primary"
    return 0
  fi
  bk_start=$(date +%s)
  pgbr stanza-create >&2 || die "pgbackrest stanza-create failed"
  pgbr --type="$1" backup >&2 || die "pgbackrest backup --type=$1 failed"
  echo "backup $1 done in $(($(date +%s) - bk_start)) s: $(pgbr_info_field 's["backup"][-1]["label"]')"
}

# WAL up to now is in the repository (pgbackrest check switches WAL and waits for it).
cmd_db_archive_check() {
  [ "$(pg_in_recovery)" = f ] || die "archive-check runs on the primary"
  pgbr check >&2 || die "WAL does not reach the repository"
  echo "archive ok: $(pgbr_info_field 's["archive"][-1]["max"]')"
}

# ---------------------------------------------------------------- restores

# The scratch server: a restored copy on another port, local socket only, never archiving
# and never a synchronous primary, beside whatever this node runs.
scratch_pg_ctl() { runuser -u postgres -- "$PYPI_PG_BIN/pg_ctl" -D "$PYPI_PGBR_SCRATCH" "$@"; }
scratch_sql() {
  runuser -u postgres -- psql -X -q -At -v ON_ERROR_STOP=1 -h "$PYPI_PG_SOCKET_DIR" \
    -p "$PYPI_PGBR_SCRATCH_PORT" -d "$PYPI_PG_DATABASE" -c "$1"
}
scratch_writable() { [ "$(scratch_sql 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; }

cmd_db_scratch_stop() {
  if [ -s "$PYPI_PGBR_SCRATCH/postmaster.pid" ]; then scratch_pg_ctl -m fast -w stop >/dev/null 2>&1 || true; fi
  rm -rf "$PYPI_PGBR_SCRATCH"
  echo "scratch server stopped and removed"
}

# `scratch_restore PGBACKREST-RESTORE-OPTION...`: restore into the scratch directory and start it
# there; it promotes at the target, so it answers writable once recovery reached it.
scratch_restore() {
  cmd_db_scratch_stop >/dev/null
  install -d -o postgres -g postgres -m 0700 "$PYPI_PGBR_SCRATCH"
  # A restored copy must never push its WAL into the repository: `--archive-mode=off` (12+; the
  # scratch postgresql.conf and command line say it too, for 11).
  sr_archive=""
  if [ "$PYPI_PG_DIALECT" = standby.signal ]; then sr_archive=--archive-mode=off; fi
  # shellcheck disable=SC2086
  pgbr --pg1-path="$PYPI_PGBR_SCRATCH" --target-action=promote $sr_archive "$@" restore >&2 ||
    die "pgbackrest restore into $PYPI_PGBR_SCRATCH failed"
  cat >"$PYPI_PGBR_SCRATCH/postgresql.conf" <<CONF
# A restored copy for inspection (pypi-node db-pitr, db-restore-test); removed by db-scratch-stop.
port = $PYPI_PGBR_SCRATCH_PORT
listen_addresses = ''
unix_socket_directories = '$PYPI_PG_SOCKET_DIR'
hba_file = '$PYPI_PGBR_SCRATCH/pg_hba.conf'
ident_file = '$PYPI_PGBR_SCRATCH/pg_ident.conf'
shared_buffers = 64MB
max_connections = 20
hot_standby = off
archive_mode = off
logging_collector = off
CONF
  echo "local all postgres peer" >"$PYPI_PGBR_SCRATCH/pg_hba.conf"
  : >"$PYPI_PGBR_SCRATCH/pg_ident.conf"
  chown postgres:postgres "$PYPI_PGBR_SCRATCH/postgresql.conf" "$PYPI_PGBR_SCRATCH/pg_hba.conf" \
    "$PYPI_PGBR_SCRATCH/pg_ident.conf"
  # The command line wins over the restored postgresql.auto.conf (a failover's synchronous override).
  scratch_pg_ctl -w -t 60 -l "$PYPI_PGBR_SCRATCH/server.log" \
    -o "-c synchronous_standby_names= -c archive_mode=off" start >/dev/null ||
    die "the scratch server did not start: $(tail -n 5 "$PYPI_PGBR_SCRATCH/server.log" 2>/dev/null)"
  wait_until "the scratch server to reach its recovery target" "${PYPI_RESTORE_WAIT_SECONDS:-3600}" scratch_writable
}

# Point in time: the cluster as it was at TIME, on the scratch server of this node.
scratch_in_use() { [ -s "$PYPI_PGBR_SCRATCH/postmaster.pid" ]; }

cmd_db_pitr() {
  [ -n "${1:-}" ] || die "db-pitr 'YYYY-MM-DD HH:MM:SS+00' (the moment to restore to)"
  ! scratch_in_use || die "a scratch server runs on this node (another db-pitr?); db-scratch-stop first"
  pt_start=$(date +%s)
  scratch_restore --type=time --target="$1"
  echo "scratch server on port $PYPI_PGBR_SCRATCH_PORT holds $PYPI_PG_DATABASE as of $1 (restored in $(($(date +%s) - pt_start)) s)"
}

cmd_db_scratch_sql() {
  [ -n "${1:-}" ] || die "db-scratch-sql 'SQL'"
  scratch_sql "$1"
}

# Proves the newest backup restores: verify the repository, restore its consistent point into
# the scratch directory, read the index's tables, remove it. The standby's job (the primary is
# busy serving); the result stays in the agent's state for the status and the alarms.
cmd_db_restore_test() {
  if svc_running postgresql && [ "$(pg_in_recovery)" = f ] && [ "${1:-}" != --on-primary ]; then
    echo "restore test: skipped, $PYPI_NODE is the primary (the standby runs it)"
    return 0
  fi
  # An operator's point-in-time copy is not the timer's to take away.
  if scratch_in_use; then
    echo "restore test: skipped, a scratch server runs on this node (db-pitr)"
    return 0
  fi
  mkdir -p "$PYPI_AGENT_STATE"
  rt_start=$(date +%s)
  rt_state="$PYPI_AGENT_STATE/restore-test"
  # verify exits 0 whatever it finds; its verbose text report says whether the repository is
  # sound (without --verbose it prints nothing when it is).
  rt_verify=$(pgbr --output=text --verbose verify 2>&1) || rt_verify="$rt_verify
status: command failed"
  printf '%s\n' "$rt_verify" >&2
  if ! printf '%s\n' "$rt_verify" | grep -q '^status: ok$'; then
    echo "$rt_start failed verify" >"$rt_state"
    die "restore test: pgbackrest verify found a problem in the repository"
  fi
  rt_label=$(pgbr_info_field 's["backup"][-1]["label"]') || rt_label=""
  [ -n "$rt_label" ] || die "restore test: the repository has no backup"
  if ! (scratch_restore --type=immediate --set="$rt_label"); then
    cmd_db_scratch_stop >/dev/null
    echo "$rt_start failed restore $rt_label" >"$rt_state"
    die "restore test: backup $rt_label did not restore"
  fi
  # The index's database answers from the copy: its tables (none before the first migration).
  if ! rt_tables=$(scratch_sql "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"); then
    cmd_db_scratch_stop >/dev/null
    echo "$rt_start failed query $rt_label" >"$rt_state"
    die "restore test: the restored copy of backup $rt_label does not answer queries"
  fi
  cmd_db_scratch_stop >/dev/null
  rt_seconds=$(($(date +%s) - rt_start))
  echo "$rt_start ok $rt_label $rt_seconds $rt_tables" >"$rt_state"
  echo "restore test ok: backup $rt_label verified and restored in $rt_seconds s; $rt_tables tables of $PYPI_PG_DATABASE read"
}

pg_out_of_recovery() { [ "$(pg_in_recovery)" = f ]; }

# Both db nodes lost: this node becomes the primary from the repository, to the end of its
# archive (every archived commit), on a new timeline. Its peer then copies it as a standby.
db_restore_primary() {
  pg_stop_local
  pg_prepare_dirs
  if [ -e "$PYPI_PG_DATA" ]; then
    rp_aside="$PYPI_PG_DATA.pre-restore.$(date +%s)"
    mv "$PYPI_PG_DATA" "$rp_aside"
    log "kept the cluster that was here as $rp_aside"
  fi
  install -d -o postgres -g postgres -m 0700 "$PYPI_PG_DATA"
  rp_start=$(date +%s%3N)
  pgbr restore >&2 || die "pgbackrest restore into $PYPI_PG_DATA failed"
  start_checked_primary
  wait_until "recovery from the repository to finish" "${PYPI_RESTORE_WAIT_SECONDS:-3600}" pg_out_of_recovery
  # Slots are not in a backup, and the passwords may have been rotated since it was taken.
  pg_bootstrap_sql | PGOPTIONS='-c synchronous_commit=local' pg_sql postgres >/dev/null
  rp_ms=$(($(date +%s%3N) - rp_start))
  mkdir -p "$PYPI_AGENT_STATE"
  # When, how long (ms), and how much: the restore's figures for the status and the drills. pg_wal
  # is left out: recovery recycles and preallocates segments there, which were never restored.
  echo "$(date +%s) $rp_ms $(du -sb --exclude=pg_wal "$PYPI_PG_DATA" | cut -f1)" \
    >"$PYPI_AGENT_STATE/restored-from-repository"
  log "restored $PYPI_NODE from the repository in $rp_ms ms"
}

cmd_db_restore() {
  # This node's own cluster may hold commits the archive lacks: only on the operator's word.
  if [ -s "$PYPI_PG_DATA/PG_VERSION" ] && [ "${1:-}" != --force ]; then
    die "$PYPI_NODE has a cluster in $PYPI_PG_DATA (it may hold commits the archive lacks); db-restore --force moves it aside"
  fi
  pg_peer=$(pg_peer_state)
  [ "$pg_peer" = down ] ||
    die "$PYPI_PG_PEER runs a $pg_peer, with newer data than any backup: promote it if needed, then re-attach this node (db-reattach)"
  wh=$(writer_holder) || exit 1
  [ "$wh" != other ] || die "the writer address points at the peer; fence it first"
  [ "$(pgbr_backup_count)" -gt 0 ] || die "the repository holds no backup of stanza $PYPI_PGBR_STANZA"
  rm -f "$PYPI_AGENT_STATE/db-fenced"
  db_restore_primary
  writer take
  pgbr_primary_ready
  echo "restored $PYPI_NODE as primary from the repository; writer $PYPI_OVERLAY_DB taken"
}

# ---------------------------------------------------------------- converge (first boot, reboot)

# The peer's role as seen over the network: primary, standby or down.
pg_peer_state() {
  pg_peer_answer=$(pg_client psql -X -At -d "$(pg_peer_conninfo) dbname=postgres" \
    -c 'SELECT pg_is_in_recovery()' 2>/dev/null) || pg_peer_answer=""
  case $pg_peer_answer in
    f) echo primary ;;
    t) echo standby ;;
    *) echo down ;;
  esac
}

# Take, give up or locate the writer address (pypi-overlay). `writer holder` prints where its
# route points: mine, other or none (never taken). Callers read it in a statement of its own, so
# an unreadable route table stops them instead of reading as "not the peer's".
writer() { "$PYPI_OVERLAY_SCRIPT" "$PYPI_OVERLAY_DB" "$1" || die "writer address $PYPI_OVERLAY_DB: $1 failed"; }
writer_holder() { writer holder || die "cannot tell where the writer route points"; }

pg_peer_is_primary() { [ "$(pg_peer_state)" = primary ]; }

# `pg_peer_silent N`: the peer does not answer N times, 3 s apart.
pg_peer_silent() {
  ps_left=$1
  while [ "$ps_left" -gt 0 ]; do
    [ "$(pg_peer_state)" = down ] || return 1
    ps_left=$((ps_left - 1))
    [ "$ps_left" -eq 0 ] || sleep 3
  done
}

# A standby or a fenced old primary needs a primary to copy; without one it stays down.
pg_wait_for_primary_peer() {
  wait_until "a primary at $PYPI_PG_PEER ($PYPI_NODE stays down: never writable on its own)" \
    "${PYPI_DB_PEER_WAIT_SECONDS:-900}" pg_peer_is_primary
}

# A new node: the initial primary initialises the cluster unless the pair already has a primary
# (a replaced node joins whoever runs); everyone else copies the primary.
db_first_boot() {
  pg_peer=$(pg_peer_state)
  wh=$(writer_holder) || exit 1
  # A peer that answers, even as a standby, holds newer data than any backup: it is promoted
  # (runbook db-primary-loss) and this node copies it, never the other way round.
  if [ "${PYPI_PG_INITIAL_ROLE:?}" = primary ] && [ "$pg_peer" = down ] && [ "$wh" != other ]; then
    # A repository with backups means the pair existed and both nodes are gone: an empty new
    # cluster would lose every registration and could not archive into that stanza.
    wait_until "the backup repository to answer" "${PYPI_REPO_WAIT_SECONDS:-900}" pgbr_backup_count
    fb_backups=$(pgbr_backup_count) || die "the backup repository stopped answering"
    # One probe is not enough to give up on a peer that may hold newer data: it stays silent a while.
    if [ "$fb_backups" -eq 0 ]; then
      db_init_primary
      writer take
      pgbr_primary_ready
      echo "converge: $PYPI_NODE initialised as primary; writer $PYPI_OVERLAY_DB taken"
      return 0
    fi
    if pg_peer_silent 3; then
      db_restore_primary
      writer take
      pgbr_primary_ready
      echo "converge: $PYPI_NODE restored as primary from the repository; writer $PYPI_OVERLAY_DB taken"
      return 0
    fi
    log "$PYPI_PG_PEER answers again; it is promoted or re-attached, not replaced by the archive"
  fi
  log "waiting for the primary before copying it"
  pg_wait_for_primary_peer
  db_init_standby
  echo "converge: $PYPI_NODE initialised as standby of $PYPI_PG_PEER"
}

# A node with a cluster (reboot, or a replaced node given its old volume). It never starts as a
# writable primary while the peer is one, nor while the writer route points elsewhere.
db_reboot() {
  if pg_is_standby_dir; then
    svc_running postgresql || svc_start postgresql
    [ "$(pg_in_recovery)" = t ] || die "$PYPI_NODE started out of recovery"
    echo "converge: $PYPI_NODE runs as standby"
    return 0
  fi
  pg_peer=$(pg_peer_state)
  wh=$(writer_holder) || exit 1
  if [ ! -e "$PYPI_AGENT_STATE/db-fenced" ] && [ "$pg_peer" != primary ] && [ "$wh" = mine ]; then
    start_checked_primary
    [ "$(pg_in_recovery)" = f ] || die "$PYPI_NODE should be the primary but is in recovery"
    writer take
    pgbr_primary_ready
    echo "converge: $PYPI_NODE runs as primary; writer $PYPI_OVERLAY_DB held"
    return 0
  fi
  # An old primary: the pair moved on without it. Fence, then follow the new primary.
  log "$PYPI_NODE holds a primary's cluster but the pair has moved on (peer $pg_peer, writer $wh); fencing"
  mkdir -p "$PYPI_AGENT_STATE"
  : >"$PYPI_AGENT_STATE/db-fenced"
  pg_stop_local
  writer release
  pg_wait_for_primary_peer
  cmd_db_reattach
  echo "converge: $PYPI_NODE was an old primary; re-attached as standby of $PYPI_PG_PEER"
}

# Bring this db node to its place in the pair by itself: data volume, then first boot or reboot.
# Idempotent: a running node is left as it is.
cmd_db_converge() {
  if [ -n "${PYPI_DATA_DEVICE:-}" ] && ! mountpoint -q "$PYPI_DATA_MOUNT"; then
    # Debian's package starts a cluster of its own on the root disk; it goes before the volume
    # is mounted over it.
    pg_stop_local
    volume_mount "$PYPI_DATA_MOUNT" postgres
  fi
  pg_prepare_dirs
  if [ -s "$PYPI_PG_DATA/PG_VERSION" ]; then db_reboot; else db_first_boot; fi
}

# The postmaster of the data directory is gone: no pid file, no such process, or a zombie that
# nobody has reaped yet (pg_ctl counts that as running).
pg_postmaster_gone() {
  [ -r "$PYPI_PG_DATA/postmaster.pid" ] || return 0
  ! proc_alive "$(head -n 1 "$PYPI_PG_DATA/postmaster.pid")"
}

# Stop the local server, if any, and wait until its postmaster is gone.
pg_stop_local() {
  if ! pg_postmaster_gone && svc_running postgresql; then
    svc_stop postgresql || pg_ctl_ -m immediate stop || true
  fi
  pg_tries=0
  until pg_postmaster_gone; do
    [ "$pg_tries" -lt 50 ] || die "postgres on $PYPI_NODE does not stop; stop the instance instead"
    pg_tries=$((pg_tries + 1))
    sleep 0.2
  done
}

cmd_db_fence() {
  # Stop the local server and drop the writer address; the fence marker keeps the agent
  # from starting this node as a primary until it has been re-attached as a standby.
  mkdir -p "$PYPI_AGENT_STATE"
  : >"$PYPI_AGENT_STATE/db-fenced"
  pg_stop_local
  writer release
  echo "fenced $PYPI_NODE"
}

cmd_db_promote() {
  [ "$(pg_in_recovery)" = t ] || die "$PYPI_NODE is not a standby; refusing to promote"
  pg_ctl_ -w -t 60 promote >/dev/null
  [ "$(pg_in_recovery)" = f ] || die "promotion did not finish"
  # pg_rewind reads the new timeline from the control file, which the next checkpoint writes.
  # The slot reserves WAL from now on, so the old primary can re-attach through it.
  pg_sql postgres >/dev/null <<SQL
CHECKPOINT;
SELECT pg_create_physical_replication_slot($(pg_literal "$PYPI_PG_SLOT"), true)
  WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $(pg_literal "$PYPI_PG_SLOT"));
SQL
  echo "promoted $PYPI_NODE"
}

# Synchronous replication stalls commits while the standby is away; `off` relieves it and
# `on` drops the override so the rendered postgresql.conf applies again.
cmd_db_sync() {
  case $1 in
    off) pgsql "ALTER SYSTEM SET synchronous_standby_names = ''" >/dev/null ;;
    on) pgsql "ALTER SYSTEM RESET synchronous_standby_names" >/dev/null ;;
    *) die "db-sync: on|off" ;;
  esac
  pgsql 'SELECT pg_reload_conf()' >/dev/null
  # New sessions see the reload once the postmaster has processed it.
  pg_tries=0
  while pg_names=$(pgsql 'SHOW synchronous_standby_names') && [ "$pg_tries" -lt 25 ]; do
    case $1:$pg_names in off:) break ;; on:?*) break ;; esac
    pg_tries=$((pg_tries + 1))
    sleep 0.2
  done
  printf "synchronous_standby_names = '%s'\n" "$pg_names"
}

# pg_rewind needs a cleanly shut down target. Its own crash recovery cannot find Debian's
# postgresql.conf (it lives outside the data directory), so run it here in single-user mode,
# which never listens on the network.
pg_clean_shutdown() {
  pg_state=$(pg pg_controldata "$PYPI_PG_DATA" | sed -n 's/^Database cluster state: *//p')
  case $pg_state in "shut down" | "shut down in recovery") return 0 ;; esac
  log "cluster state is '$pg_state'; finishing crash recovery in single-user mode"
  runuser -u postgres -- "$PYPI_PG_BIN/postgres" --single -F \
    -c "config_file=$PYPI_PG_CONF/postgresql.conf" template1 </dev/null >/dev/null
}

# Crash recovery ends in a checkpoint that recycles the WAL the archive already holds, and
# pg_rewind must read the target's WAL back to the last common checkpoint. From 15 it fetches
# what is gone through restore_command (the archive); --config-file names Debian's
# postgresql.conf, which holds that setting outside the data directory.
pg_rewind_target() {
  set -- --target-pgdata="$PYPI_PG_DATA" --source-server="$pg_source"
  if [ "$PYPI_PG_VERSION" -ge 15 ]; then
    set -- "$@" --restore-target-wal --config-file="$PYPI_PG_CONF/postgresql.conf"
  fi
  pg pg_rewind "$@" >&2
}

cmd_db_reattach() {
  [ -e "$PYPI_AGENT_STATE/db-fenced" ] || die "$PYPI_NODE is not fenced; run db-fence first"
  pg_stop_local
  pg_prepare_dirs
  pg_source="host=$PYPI_PG_PEER port=$PYPI_PG_PORT user=$PYPI_PG_REPL_USER dbname=postgres passfile=$PYPI_PG_PASSFILE connect_timeout=5"
  method=""
  if [ ! -x "$PYPI_PG_BIN/pg_rewind" ]; then
    log "no pg_rewind in $PYPI_PG_BIN; taking a fresh base backup"
  elif [ ! -s "$PYPI_PG_DATA/PG_VERSION" ]; then
    log "no cluster in $PYPI_PG_DATA; taking a fresh base backup"
  elif pg_clean_shutdown && pg_rewind_target; then
    method=pg_rewind
  else
    log "pg_rewind failed; taking a fresh base backup"
  fi
  if [ -z "$method" ]; then
    rm -rf "$PYPI_PG_DATA.old"
    if [ -e "$PYPI_PG_DATA" ]; then mv "$PYPI_PG_DATA" "$PYPI_PG_DATA.old"; fi
    install -d -o postgres -g postgres -m 0700 "$PYPI_PG_DATA"
    pg_client pg_basebackup -D "$PYPI_PG_DATA" -X stream -S "$PYPI_PG_SLOT" -c fast \
      -d "$(pg_peer_conninfo)" || die "pg_basebackup from $PYPI_PG_PEER failed"
    method=pg_basebackup
  fi
  # Both copy the peer's postgresql.auto.conf, which may carry the relaxed synchronous setting
  # of the failover; this node must get the rendered one if it is promoted later.
  if [ -e "$PYPI_PG_DATA/postgresql.auto.conf" ]; then
    sed -i '/^[[:space:]]*synchronous_standby_names[[:space:]]*=/d' "$PYPI_PG_DATA/postgresql.auto.conf"
  fi
  # pg_rewind keeps the target's own slots; as a standby the old primary's slot would only pin WAL.
  if [ -d "$PYPI_PG_DATA/pg_replslot" ]; then find "$PYPI_PG_DATA/pg_replslot" -mindepth 1 -delete; fi
  install_standby_files
  rm -f "$PYPI_AGENT_STATE/db-fenced"
  svc_start postgresql
  [ "$(pg_in_recovery)" = t ] || die "re-attached node is not in recovery"
  echo "reattached $PYPI_NODE via $method"
}
cmd_db_replication() {
  pgsql "SELECT application_name || ' ' || state || ' ' || sync_state FROM pg_stat_replication"
}

db_streams() { cmd_db_replication | grep -q "^$1 streaming "; }

# A re-attached standby replays what it holds (or fetches from the archive) before it streams;
# on a loaded node that takes longer than any fixed sleep.
cmd_db_replication_wait() {
  wait_until "$1 streaming from $PYPI_NODE" 100 db_streams "$1"
  cmd_db_replication
}

# ---------------------------------------------------------------- status

# This node's part of `pypi-node status`: the writer address, the Postgres role, the backups.
cmd_db_status() {
  printf 'writer\t%s\t%s\n' "$PYPI_OVERLAY_DB" "$("$PYPI_OVERLAY_SCRIPT" "$PYPI_OVERLAY_DB" status)"
  if svc_running postgresql; then
    if [ "$(pg_in_recovery)" = t ]; then r=standby; else r=primary; fi
    printf 'postgres\t%s\n' "$r"
  fi
  backup_status
}

# For the alarms: the newest backup and its age, the newest archived WAL (and, on the primary,
# how long ago it was archived and how many pushes failed), the last restore test.
backup_status() {
  bs_now=$(date +%s)
  bs_info=$(runuser -u postgres -- pgbackrest --config="$PYPI_PGBR_CONF" --stanza="$PYPI_PGBR_STANZA" \
    --output=json info 2>/dev/null) || bs_info=""
  printf '%s' "$bs_info" | python3 -c '
import json, sys
now = int(sys.argv[1])
try:
    s = json.load(sys.stdin)[0]
except (ValueError, IndexError):
    print("backup\tunknown\trepository did not answer")
    sys.exit(0)
b = s.get("backup") or []
if b:
    last = b[-1]
    print("backup\tnewest\t%s\t%s\tage_s=%d" % (last["label"], last["type"], now - last["timestamp"]["stop"]))
else:
    print("backup\tnone\t%s" % s.get("status", {}).get("message", ""))
a = [x for x in s.get("archive") or [] if x.get("max")]
print("archive\tnewest\t%s" % (a[-1]["max"] if a else "none"))
' "$bs_now"
  if svc_running postgresql && [ "$(pg_in_recovery)" = f ]; then
    pgsql "SELECT 'archiver' || chr(9) || coalesce(last_archived_wal, 'none') || chr(9) || 'age_s=' ||
      coalesce(extract(epoch FROM now() - last_archived_time)::bigint::text, '-') || chr(9) ||
      'failed=' || failed_count FROM pg_stat_archiver"
  fi
  if [ -r "$PYPI_AGENT_STATE/restore-test" ]; then
    read -r bs_at bs_result bs_rest <"$PYPI_AGENT_STATE/restore-test"
    printf 'restore-test\t%s\tage_s=%s\t%s\n' "$bs_result" "$((bs_now - bs_at))" "$bs_rest"
  fi
}

usage() {
  cat >&2 <<'USAGE'
usage: pypi-db COMMAND
  converge              first boot or reboot: mount the data volume, take this node's place in the pair
  fence                 stop Postgres, drop the writer address, mark the node fenced
  promote               promote this standby to primary
  reattach              re-attach a fenced old primary as a standby (pg_rewind, else base backup)
  backup full|diff|incr a pgBackRest backup (the primary; a standby skips)
  archive-check         the primary's WAL up to now reaches the repository
  pitr TIME             restore the cluster as of TIME onto this node's scratch server
  scratch-sql SQL       query the scratch server
  scratch-stop          stop and remove the scratch server
  restore-test          verify the repository and restore the newest backup to scratch (the standby)
  restore [--force]     both nodes lost: become the primary from the repository
  sync on|off           synchronous replication switch on the primary
  replication [--wait NAME]  the primary's view of its standbys; --wait: until NAME streams
  status                the writer address, the Postgres role, backups and archive (for pypi-node status)
USAGE
  exit 2
}

main() {
  [ $# -ge 1 ] || usage
  command=$1
  shift
  load_config
  [ "$PYPI_ROLE" = db ] || die "pypi-db runs on db nodes, not on a $PYPI_ROLE"
  case $command in
    converge) cmd_db_converge ;;
    fence) cmd_db_fence ;;
    promote) cmd_db_promote ;;
    reattach) cmd_db_reattach ;;
    sync) [ $# -eq 1 ] || usage && cmd_db_sync "$1" ;;
    replication)
      case $# in
        0) cmd_db_replication ;;
        2) [ "$1" = --wait ] || usage && cmd_db_replication_wait "$2" ;;
        *) usage ;;
      esac
      ;;
    backup) cmd_db_backup "${1:-}" ;;
    archive-check) cmd_db_archive_check ;;
    pitr) cmd_db_pitr "${1:-}" ;;
    scratch-sql) cmd_db_scratch_sql "${1:-}" ;;
    scratch-stop) cmd_db_scratch_stop ;;
    restore-test) cmd_db_restore_test "${1:-}" ;;
    restore) cmd_db_restore "${1:-}" ;;
    status) cmd_db_status ;;
    *) usage ;;
  esac
}

main "$@"

#!/bin/sh
# pypi-health: measures this node's checks (the rows of its health table), judges each against
# the table's thresholds and prints one JSON record per check. With --publish it also sends the
# values as metrics: CloudWatch on AWS, the lab's metric store in the lab. `pypi-node health`
# runs it; so does the pypi-health timer.
set -eu
# shellcheck source=/dev/null
. "$PYPI_LIB"

# A JSON string: backslash and double quote escaped; the table holds no control characters.
TAB=$(printf '\t')

json_string() { printf '"%s"' "$(printf '%s' "$1" | sed 's/[\\"]/\\&/g')"; }

# Probes print one number. Each is bounded in time: a hung NFS mount or database must not stall
# the whole run (the timer's next run waits for this one).
bounded() { timeout -k 1 "${HEALTH_PROBE_SECONDS:-3}" "$@"; }

probe_service() { if svc_running "$1"; then echo 1; else echo 0; fi; }

probe_disk() {
  if [ -n "$1" ] && mountpoint -q "$1" 2>/dev/null; then
    bounded df -P "$1" | awk 'NR == 2 { sub("%", "", $5); print $5 + 0 }'
  else
    echo 0
  fi
}

probe_heartbeat_peer() {
  pd_state=$(bounded cl_status nodestatus "$PYPI_PEER_NODE" 2>/dev/null) || pd_state=""
  case $pd_state in active | up) echo 1 ;; *) echo 0 ;; esac
}

probe_peer_fips_held() {
  pf_n=0
  for pf_addr in $PYPI_PEER_FIPS; do
    [ "$(bounded "$PYPI_FIP_SCRIPT" "$pf_addr" status 2>/dev/null)" = running ] && pf_n=$((pf_n + 1))
  done
  echo "$pf_n"
}

# A floating IP of this node (check fip-<address with dashes>) held exactly once: pypi-fip held.
probe_fip() {
  pf_addr=$(printf '%s' "$1" | tr - .)
  bounded "$PYPI_FIP_SCRIPT" "$pf_addr" held 2>/dev/null || echo 0
}

probe_upload_backend() {
  printf 'show servers state %s\n' "$PYPI_UPLOAD_BACKEND" |
    bounded socat - "UNIX-CONNECT:$PYPI_HAPROXY_SOCKET" 2>/dev/null |
    awk -v s="$1" 'NR > 2 && $4 == s { up = ($6 == 2 && $7 == 0) } END { print up + 0 }'
}

# Days the live certificate has left (negative once expired); 0 when it cannot be read.
probe_cert_days() {
  pc_end=$(openssl x509 -noout -enddate -in "$PYPI_TLS_CERT" 2>/dev/null) || {
    echo 0
    return
  }
  pc_end=$(date -d "${pc_end#notAfter=}" +%s) || {
    echo 0
    return
  }
  echo $(((pc_end - $(date +%s)) / 86400))
}

probe_index() {
  # Longer than the app's own probe timeout (3 s), so it answers 503 rather than nothing.
  pi_code=$(timeout -k 1 6 curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $PYPI_DOMAIN" \
    "$PYPI_APP_HEALTH_URL" 2>/dev/null) || pi_code=000
  # 503 is the app answering that a dependency fails (the database, the volume): their own
  # checks page for those, with their runbooks. This check is about the app server itself.
  case $pi_code in 200 | 503) echo 1 ;; *) echo 0 ;; esac
}

# The package root answers, and is the laid-out volume (a lost or empty volume has no incoming/).
probe_package_root() {
  if bounded test -d "$PYPI_PACKAGE_ROOT/incoming" 2>/dev/null; then echo 1; else echo 0; fi
}

# DRBD: Connected, both disks UpToDate, exactly one Primary (from this node's view).
probe_drbd() {
  pd_res=$PYPI_DRBD_RESOURCE
  pd_c=$(bounded drbdadm cstate "$pd_res" 2>/dev/null) || pd_c=""
  pd_d=$(bounded drbdadm dstate "$pd_res" 2>/dev/null) || pd_d=""
  pd_r=$(bounded drbdadm role "$pd_res" 2>/dev/null) || pd_r=""
  case $pd_c:$pd_d:$pd_r in
    Connected:UpToDate/UpToDate:Primary/Secondary | Connected:UpToDate/UpToDate:Secondary/Primary) echo 1 ;;
    *) echo 0 ;;
  esac
}

# The storage address's holder exports the package volume, mounted (the peer has nothing to export).
probe_nfs_export() {
  if [ "$("$PYPI_OVERLAY_SCRIPT" "$PYPI_OVERLAY_STORAGE" status 2>/dev/null)" != running ]; then
    echo 1
  elif mountpoint -q "$PYPI_VOLUME_MOUNT" && bounded exportfs -v 2>/dev/null | awk -v p="$PYPI_VOLUME_MOUNT" '$1 == p { f = 1 } END { exit !f }'; then
    echo 1
  else
    echo 0
  fi
}

# How many of the newest registered files are missing from the volume: a bad rm or a lost
# volume shows here first, while the database still lists them.
probe_package_files() {
  pm_conn="host=$PYPI_OVERLAY_DB port=$PYPI_PG_PORT dbname=$PYPI_PG_DATABASE user=$PYPI_PG_APP_USER passfile=$PYPI_APP_PASSFILE connect_timeout=2"
  pm_list=$(bounded psql -X -q -At -d "$pm_conn" -c "SELECT project || '/' || filename FROM files
    WHERE state = 'ok' ORDER BY uploaded_at DESC LIMIT $PYPI_HEALTH_NEWEST_FILES" 2>/dev/null) || {
    # No database: not this check's finding (the db nodes' checks report it).
    echo 0
    return
  }
  pm_missing=0
  for pm_file in $pm_list; do
    bounded test -e "$PYPI_PACKAGE_ROOT/packages/$pm_file" 2>/dev/null || pm_missing=$((pm_missing + 1))
  done
  echo "$pm_missing"
}

# Seconds the oldest upload has waited in incoming/<user>/upload for the register job.
probe_register_queue() {
  pq_oldest=$(bounded find "$PYPI_PACKAGE_ROOT/incoming" -mindepth 3 -maxdepth 3 -path '*/upload/*' \
    -type f -printf '%T@\n' 2>/dev/null | sort -n | head -n 1) || pq_oldest=""
  if [ -z "$pq_oldest" ]; then
    echo 0
  else
    awk -v t="$pq_oldest" -v now="$(date +%s)" 'BEGIN { d = now - t; print (d > 0 ? int(d) : 0) }'
  fi
}

db_is_primary() { svc_running postgresql && [ "$(bounded_sql 'SELECT pg_is_in_recovery()')" = f ]; }
bounded_sql() { bounded runuser -u postgres -- psql -X -q -At -p "$PYPI_PG_PORT" -h "$PYPI_PG_SOCKET_DIR" -d postgres -c "$1" 2>/dev/null; }

# A primary: it is writable and the writer address routes to it. A standby: the server at the
# writer address is a writable primary (not a standby, and not this node).
probe_writer() {
  if [ "$DB_ROLE" = primary ]; then
    if [ "$("$PYPI_OVERLAY_SCRIPT" "$PYPI_OVERLAY_DB" status 2>/dev/null)" = running ]; then echo 1; else echo 0; fi
  elif [ "$(bounded runuser -u postgres -- psql -X -q -At \
    "host=$PYPI_OVERLAY_DB port=$PYPI_PG_PORT user=$PYPI_PG_REPL_USER dbname=postgres passfile=$PYPI_PG_PASSFILE connect_timeout=2" \
    -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; then
    echo 1
  else
    echo 0
  fi
}

# Primary-only values read 1 (or 0 for amounts) on a standby, and the other way round.
primary_sql() {
  if [ "$DB_ROLE" = primary ]; then
    ps_value=$(bounded_sql "$1") || ps_value=""
    echo "${ps_value:-$3}"
  else
    echo "$2"
  fi
}

# From 12 a standby that stopped replying counts as gone at once: a network cut leaves its
# connection (and its row) until wal_sender_timeout.
replying() {
  [ "${PYPI_PG_VERSION%%.*}" -ge 12 ] || return 0
  printf " AND reply_time > now() - interval '%s seconds'" "$PYPI_PG_STANDBY_SILENT_SECONDS"
}

probe_replay_lag() {
  if [ "$DB_ROLE" = standby ]; then
    pr_lag=$(bounded_sql "SELECT CASE WHEN pg_last_wal_receive_lsn() IS NULL
        OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
      ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::bigint, 0) END") || pr_lag=""
    echo "${pr_lag:-0}"
  else
    echo 0
  fi
}

# Received WAL the standby has not replayed yet, in bytes.
probe_replay_lag_bytes() {
  if [ "$DB_ROLE" = standby ]; then
    bounded_sql "SELECT coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint" || echo 0
  else
    echo 0
  fi
}

probe_restore_test() {
  if [ -r "$PYPI_AGENT_STATE/restore-test" ]; then
    read -r _ pt_result _ <"$PYPI_AGENT_STATE/restore-test" || pt_result=""
    case $pt_result in failed*) echo 0 ;; *) echo 1 ;; esac
  else
    echo 1
  fi
}

# Hours since the newest backup ended, on the primary. pgbackrest info is read at most every
# five minutes, or every run while it reports no recent backup.
probe_backup_age() {
  if [ "$DB_ROLE" != primary ]; then
    echo 0
    return
  fi
  pb_cache=$HEALTH_STATE/backup-stop
  pb_now=$(date +%s)
  pb_stop="" pb_read=0
  [ -r "$pb_cache" ] && read -r pb_read pb_stop <"$pb_cache"
  if [ $((pb_now - pb_read)) -ge 300 ] || [ -z "$pb_stop" ] ||
    [ $((pb_now - pb_stop)) -ge 3600 ]; then
    pb_stop=$(bounded runuser -u postgres -- pgbackrest --config="$PYPI_PGBR_CONF" --stanza="$PYPI_PGBR_STANZA" \
      --output=json info 2>/dev/null | awk '
        { while (match($0, /"stop":[0-9]+/)) { v = substr($0, RSTART + 7, RLENGTH - 7) + 0; if (v > m) m = v; $0 = substr($0, RSTART + RLENGTH) } }
        END { if (m) print m }') || pb_stop=""
    printf '%s %s\n' "$pb_now" "$pb_stop" >"$pb_cache"
  fi
  if [ -z "$pb_stop" ]; then
    # No backup yet: the primary's first start takes one; count from when this node became primary.
    pb_stop=$(stat -c %Y "$HEALTH_STATE/primary-since" 2>/dev/null || echo "$pb_now")
  fi
  echo $(((pb_now - pb_stop) / 3600))
}

probe_bundle_refused() {
  if [ -s "$PYPI_AGENT_STATE/apply-refused" ]; then echo 1; else echo 0; fi
}

# Seconds since the last apply without error (before any was recorded: since the installed
# config was written).
probe_bundle_age() {
  pa_at=""
  [ -r "$PYPI_AGENT_STATE/apply-ok" ] && read -r pa_at <"$PYPI_AGENT_STATE/apply-ok"
  [ -n "$pa_at" ] || pa_at=$(stat -c %Y "$PYPI_NODE_CONFIG")
  echo $(($(date +%s) - pa_at))
}

# The measured value of one check (its table id).
measure() {
  case $1 in
    reporting) echo 1 ;;
    bundle-refused) probe_bundle_refused ;;
    bundle-age) probe_bundle_age ;;
    disk-root) probe_disk / ;;
    disk-data) probe_disk "${PYPI_DATA_MOUNT:-${PYPI_VOLUME_MOUNT:-}}" ;;
    nginx) probe_service nginx ;;
    haproxy) probe_service haproxy ;;
    heartbeat-peer) probe_heartbeat_peer ;;
    peer-fips-held) probe_peer_fips_held ;;
    fip-*) probe_fip "${1#fip-}" ;;
    upload-backend-*) probe_upload_backend "${1#upload-backend-}" ;;
    cert-days-left) probe_cert_days ;;
    index) probe_index ;;
    package-root) probe_package_root ;;
    register-queue-age) probe_register_queue ;;
    package-files-missing) probe_package_files ;;
    drbd) probe_drbd ;;
    nfs-export) probe_nfs_export ;;
    writer) probe_writer ;;
    standby-streaming) primary_sql "SELECT (count(*) > 0)::int FROM pg_stat_replication WHERE state = 'streaming'$(replying)" 1 0 ;;
    sync-standby) primary_sql "SELECT (count(*) > 0)::int FROM pg_stat_replication WHERE sync_state = 'sync'$(replying)" 1 0 ;;
    replay-lag-seconds) probe_replay_lag ;;
    replay-lag-bytes) probe_replay_lag_bytes ;;
    slot-wal-percent)
      primary_sql "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)), 0)::bigint * 100
        / ($PYPI_PG_MAX_SLOT_WAL_MB::bigint * 1048576) FROM pg_replication_slots" 0 0
      ;;
    archive-failing)
      primary_sql "SELECT (last_failed_time IS NOT NULL AND (last_archived_time IS NULL
        OR last_failed_time > last_archived_time))::int FROM pg_stat_archiver" 0 0
      ;;
    restore-test) probe_restore_test ;;
    backup-age-hours) probe_backup_age ;;
    *)
      log "health: no probe for check $1"
      echo 0
      ;;
  esac
}

# A probe's number; anything else (a probe that printed nothing) counts as 0.
measured_value() {
  mv_value=$(measure "$1" </dev/null)
  case $mv_value in '' | *[!0-9.-]*) mv_value=0 ;; esac
  echo "$mv_value"
}

# ok, warn or crit: the comparison and thresholds of the table row (none: never critical).
judge() {
  awk -v v="$1" -v cmp="$2" -v crit="$3" -v warn="$4" 'BEGIN {
    if (cmp == "none") { print "ok"; exit }
    past_crit = (cmp == "atLeast") ? (v >= crit) : (v < crit)
    past_warn = (warn != "-") && ((cmp == "atLeast") ? (v >= warn) : (v < warn))
    print past_crit ? "crit" : (past_warn ? "warn" : "ok")
  }'
}

publish() {
  case $PYPI_BACKEND in
    lab)
      # The lab's stand-in for PutMetricData: one line per datapoint, appended in one write.
      mkdir -p "$PYPI_LAB_CLOUD/metrics"
      cat "$1" >>"$PYPI_LAB_CLOUD/metrics/$PYPI_NODE.tsv"
      ;;
    aws)
      # PutMetricData takes at most 1000 datapoints a call; a node has fewer than 40.
      awk -F '\t' -v node="$PYPI_NODE" 'BEGIN { printf "[" }
        { printf "%s{\"MetricName\":\"%s\",\"Dimensions\":[{\"Name\":\"Node\",\"Value\":\"%s\"}],\"Value\":%s,\"Unit\":\"%s\",\"StorageResolution\":1,\"Timestamp\":%d}",
            (NR > 1 ? "," : ""), $2, node, $3, $4, $1 / 1000 }
        END { print "]" }' "$1" >"$1.json"
      aws_try 3 cloudwatch put-metric-data --namespace "$PYPI_HEALTH_NAMESPACE" \
        --metric-data "file://$1.json" >/dev/null || die "health: put-metric-data failed"
      ;;
  esac
}

main() {
  publish=no
  case ${1:-} in
    --publish) publish=yes ;;
    "") ;;
    *) die "usage: pypi-node health [--publish]" ;;
  esac
  load_config
  HEALTH_STATE=$PYPI_AGENT_STATE/health
  mkdir -p "$HEALTH_STATE"
  DB_ROLE=none
  if [ "$PYPI_ROLE" = db ]; then
    if db_is_primary; then DB_ROLE=primary; elif svc_running postgresql; then DB_ROLE=standby; else DB_ROLE=down; fi
    if [ "$DB_ROLE" = primary ]; then
      [ -e "$HEALTH_STATE/primary-since" ] || : >"$HEALTH_STATE/primary-since"
    else
      rm -f "$HEALTH_STATE/primary-since"
    fi
  fi
  now_ms=$(($(date +%s) * 1000))
  points=$(mktemp)
  records=$(mktemp)
  measured=$(mktemp)
  trap 'rm -f "$points" "$points.json" "$records" "$measured" "$measured.new" "$HEALTH_STATE/last.$$"' EXIT
  confirm=""
  while IFS=$TAB read -r id cmp crit warn unit runbook summary; do
    value=$(measured_value "$id")
    state=$(judge "$value" "$cmp" "$crit" "$warn")
    # A check that turns critical is measured again a second later and published only if it
    # still is: a daemon its unit restarts at once pages nobody. Silence is never confirmed.
    previous=$(awk -F '\t' -v id="$id" '$1 == id { print $3 }' "$HEALTH_STATE/last" 2>/dev/null || true)
    if [ "$state" = crit ] && [ "$id" != reporting ] && [ "$previous" != crit ]; then confirm="$confirm $id"; fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$value" "$state" "$cmp" "$crit" "$warn" "$unit" \
      "$runbook" "$summary" >>"$measured"
  done <"$PYPI_HEALTH_TABLE"
  if [ -n "$confirm" ]; then
    sleep "${HEALTH_CONFIRM_SECONDS:-1}"
    : >"$measured.new"
    while IFS=$TAB read -r id value state cmp crit warn unit runbook summary; do
      case " $confirm " in
        *" $id "*)
          value=$(measured_value "$id")
          state=$(judge "$value" "$cmp" "$crit" "$warn")
          ;;
      esac
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$value" "$state" "$cmp" "$crit" "$warn" "$unit" \
        "$runbook" "$summary" >>"$measured.new"
    done <"$measured"
    mv -f "$measured.new" "$measured"
  fi
  while IFS=$TAB read -r id value state _cmp _crit _warn unit runbook summary; do
    printf '%s\t%s\t%s\t%s\n' "$now_ms" "$id" "$value" "$unit" >>"$points"
    printf '{"node":%s,"check":%s,"state":"%s","value":%s,"unit":"%s","runbook":%s,"summary":%s}\n' \
      "$(json_string "$PYPI_NODE")" "$(json_string "$id")" "$state" "$value" "$unit" \
      "$(json_string "$runbook")" "$(json_string "$summary")" >>"$records"
  done <"$measured"
  cut -f 1-3 "$measured" >"$HEALTH_STATE/last.$$"
  mv -f "$HEALTH_STATE/last.$$" "$HEALTH_STATE/last"
  # A JSON array, one record per line (so a runbook's expected output can match one check).
  awk 'BEGIN { print "[" } { printf "%s%s", (NR > 1 ? ",\n" : ""), $0 } END { print "\n]" }' "$records"
  [ "$publish" = no ] || publish "$points"
}

main "$@"

#!/bin/sh
# pypi-node: the node agent. Installs config bundles (validating every candidate with its
# daemon before it replaces the live file, checking the daemon runs on it after), and reports
# the node's status. The role's own work is in the role's tool (pypi-db, pypi-app,
# pypi-balancer), the Heartbeat resource scripts and pypi-volume; pypi-node passes their verbs on.
set -eu

# shellcheck source=/dev/null
. "$PYPI_LIB"

TAB=$(printf '\t')

# ---------------------------------------------------------------- validation

# POSIX sh has no locals, hence the prefixed names.
# Copy a daemon's config dir and overlay every candidate of the bundle that lives in it,
# so the daemon checks the configuration it would really load.
stage_confdir() {
  sd_bundle=$1 sd_confdir=$2 sd_stage=$3
  # An unset path must never widen the copy to the whole filesystem.
  case $sd_confdir in /?*) ;; *) die "stage_confdir: refusing to stage '$sd_confdir'" ;; esac
  cp -a "$sd_confdir/." "$sd_stage/"
  while IFS=$TAB read -r sd_kind sd_path _mode _owner _group _validator _reloads sd_target; do
    case $sd_path in "$sd_confdir"/*) ;; *) continue ;; esac
    sd_rel=${sd_path#"$sd_confdir"/}
    mkdir -p "$sd_stage/$(dirname "$sd_rel")"
    case $sd_kind in
      file) cp "$sd_bundle/files$sd_path" "$sd_stage/$sd_rel" ;;
      symlink) ln -sfn "$sd_target" "$sd_stage/$sd_rel" ;;
      absent) rm -f "$sd_stage/$sd_rel" ;;
    esac
  done <"$sd_bundle/manifest"
}

# validate_tool TOOL BUNDLE CANDIDATE_PATH LIVE_PATH; prints the daemon's complaint on failure.
validate_tool() {
  tool=$1 bundle=$2 candidate=$3
  case $tool in
    nginx)
      stage=$(mktemp -d)
      stage_confdir "$bundle" "$(dirname "${PYPI_NGINX_CONF:?}")" "$stage"
      rc=0
      nginx -t -q -c "$stage/$(basename "$PYPI_NGINX_CONF")" 2>&1 || rc=$?
      rm -rf "$stage"
      return "$rc"
      ;;
    apache)
      stage=$(mktemp -d)
      stage_confdir "$bundle" "${PYPI_APACHE_DIR:?}" "$stage"
      rc=0
      APACHE_CONFDIR=$stage apache2ctl -t 2>&1 || rc=$?
      rm -rf "$stage"
      return "$rc"
      ;;
    haproxy) haproxy -c -q -f "$candidate" 2>&1 ;;
    # sshd -t wants its privilege separation directory, which only a running ssh.service creates.
    sshd) mkdir -p /run/sshd && /usr/sbin/sshd -t -f "$candidate" 2>&1 ;;
    postgres)
      # -C parses the whole file (and fails on unknown or invalid settings) without starting.
      readable=$(mktemp)
      cp "$candidate" "$readable"
      chmod 0644 "$readable"
      rc=0
      { runuser -u postgres -- "$PYPI_PG_BIN/postgres" -C data_directory -c "config_file=$readable" >/dev/null; } 2>&1 || rc=$?
      rm -f "$readable"
      return "$rc"
      ;;
    drbd)
      # drbdadm 8.4 (Debian's kernel module); the node is emulated by this host's name.
      drbdadm84=/usr/lib/drbd/drbdadm-84
      [ -x "$drbdadm84" ] || drbdadm84=drbdadm
      stage=$(mktemp -d)
      mkdir "$stage/drbd.d"
      stage_confdir "$bundle" "${PYPI_DRBD_DIR:?}" "$stage/drbd.d"
      printf 'include "%s/drbd.d/global_common.conf";\ninclude "%s/drbd.d/*.res";\n' "$stage" "$stage" \
        >"$stage/drbd.conf"
      rc=0
      "$drbdadm84" -c "$stage/drbd.conf" -d up all >/dev/null 2>"$stage/err" || rc=$?
      cat "$stage/err"
      rm -rf "$stage"
      return "$rc"
      ;;
    exportfs)
      # exportfs reads only the live exports file, so check the candidate in a private mount
      # namespace (over nfs-utils' own state dir, Debian's).
      # shellcheck disable=SC2016
      unshare --mount --propagation private sh -c '
        mount --bind "$1" "$2" && mount -t tmpfs tmpfs /var/lib/nfs &&
          touch /var/lib/nfs/etab /var/lib/nfs/rmtab && exportfs -ra' exportfs-check \
        "$candidate" "${PYPI_NFS_EXPORTS:?}" 2>&1
      ;;
    sh) sh -n "$candidate" 2>&1 ;;
    *) die "unknown validator $tool" ;;
  esac
}

# ---------------------------------------------------------------- apply / check

# The directory-wide validator that covers a path, if any. node.env names only the config dirs
# of the daemons this node runs.
tree_validator() {
  if [ -n "${PYPI_NGINX_CONF:-}" ]; then
    case $1 in "$(dirname "$PYPI_NGINX_CONF")"/*) echo nginx && return 0 ;; esac
  fi
  if [ -n "${PYPI_APACHE_DIR:-}" ]; then
    case $1 in "$PYPI_APACHE_DIR"/*) echo apache && return 0 ;; esac
  fi
  if [ -n "${PYPI_DRBD_DIR:-}" ]; then
    case $1 in "$PYPI_DRBD_DIR"/*) echo drbd && return 0 ;; esac
  fi
  echo ""
}

# Some file of the bundle checked by VALIDATOR, for changes that are not files themselves.
first_file_for() {
  ff_file=$(awk -F '\t' -v v="$2" '$1 == "file" && $6 == v { print $2; exit }' "$1/manifest")
  [ -n "$ff_file" ] && printf '%s\n' "$1/files$ff_file"
}

same_content() { [ -e "$2" ] && cmp -s "$1" "$2"; }

same_link() { [ -L "$1" ] && [ "$(readlink "$1")" = "$2" ]; }

# `in_service_order BUNDLE SVC...`: the services in the bundle's start order, then the rest.
in_service_order() {
  io_bundle=$1
  shift
  io_first=""
  if [ -r "$io_bundle/services" ]; then
    io_all=$(cat "$io_bundle/services")
    for io_svc in $io_all; do
      case " $* " in *" $io_svc "*) io_first="$io_first $io_svc" ;; esac
    done
  fi
  for io_svc; do
    case " $io_first " in *" $io_svc "*) ;; *) io_first="$io_first $io_svc" ;; esac
  done
  echo "$io_first"
}

add_reloads() {
  [ "$1" = - ] && return 0
  for svc in $(printf '%s' "$1" | tr ',' ' '); do
    case " $RELOAD " in *" $svc "*) ;; *) RELOAD="$RELOAD $svc" ;; esac
  done
}

# Secrets come from the secret store at apply time; they never travel in the bundle. They are
# installed before validation because validators read them (TLS key, DRBD secret).
install_secrets() {
  bundle=$1
  [ -s "$bundle/secrets" ] || return 0
  while IFS=$TAB read -r parameter path mode owner group format reloads pgpass_entry; do
    value=$(secret_value "$parameter") || die "cannot read secret $parameter"
    tmp="$path.pypi-node.$$"
    mkdir -p "$(dirname "$path")"
    (
      umask 077
      case $format in
        raw) printf '%s\n' "$value" >"$tmp" ;;
        heartbeat-authkeys) printf 'auth 1\n1 sha1 %s\n' "$value" >"$tmp" ;;
        # pgpass needs backslash and colon escaped inside the password.
        pgpass) printf '%s:%s\n' "$pgpass_entry" "$(printf '%s' "$value" | sed 's/[\\:]/\\&/g')" >"$tmp" ;;
        drbd-shared-secret)
          printf 'common {\n  net {\n    shared-secret "%s";\n  }\n}\n' \
            "$(printf '%s' "$value" | sed 's/[\\"]/\\&/g')" >"$tmp"
          ;;
        *) die "unknown secret format $format" ;;
      esac
    )
    if same_content "$tmp" "$path"; then
      rm -f "$tmp"
      continue
    fi
    # nginx serves an expired certificate without complaint: refuse it before anything changes.
    if [ "$path" = "${PYPI_TLS_CERT:-}" ] && ! openssl x509 -noout -checkend 0 -in "$tmp" >/dev/null 2>&1; then
      cc_end=$(openssl x509 -noout -enddate -in "$tmp" 2>/dev/null || echo "unreadable")
      rm -f "$tmp"
      refuse "candidate certificate from $parameter is expired or unreadable ($cc_end); live configuration left untouched"
    fi
    chown "$owner:$group" "$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
    # sshd refuses a host key whose .pub (the image's own) does not match it.
    if [ "$path" = "${PYPI_UPLOAD_HOST_KEY:-}" ]; then ssh-keygen -y -f "$path" >"$path.pub"; fi
    printf 'changed\tsecret\t%s\n' "$path"
    changed=$((changed + 1))
    add_reloads "$reloads"
  done <"$bundle/secrets"
}

# On AWS the bundle names its packages, so the user data never changes with the config.
install_packages() {
  [ "$PYPI_BACKEND" = aws ] && [ -s "$1/packages" ] || return 0
  missing=""
  while read -r pkg; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $pkg"
  done <"$1/packages"
  [ -z "$missing" ] && return 0
  log "installing$missing"
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >&2
}

# HAProxy owns port 22 on the balancers; admin access is SSM, so Debian's sshd must not run.
disable_balancer_sshd() {
  [ "$PYPI_ROLE" = balancer ] && [ "$PYPI_SERVICE_MANAGER" = systemd ] || return 0
  if systemctl is-enabled --quiet ssh.service 2>/dev/null || systemctl is-active --quiet ssh.service; then
    systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
    printf 'disabled\tssh\n'
  fi
}

# Upload users exist on every app server with the same uid; their password is `*` (not `!`),
# because sshd without PAM refuses accounts marked locked.
ensure_upload_users() {
  [ "$PYPI_ROLE" = app ] || return 0
  for entry in $PYPI_UPLOAD_USERS; do
    user=${entry%%:*} uid=${entry#*:}
    id "$user" >/dev/null 2>&1 ||
      useradd --uid "$uid" --no-create-home --home-dir / --shell /usr/sbin/nologin --password '*' "$user"
  done
}

# The bundle to check or apply: the argument, else the installed node.env's PYPI_BUNDLE_DIR. Read
# in a subshell: the bundle's own node.env is loaded next, and nothing of the old one may linger.
bundle_dir() {
  if [ -n "${1:-}" ]; then
    printf '%s\n' "$1"
  else
    # shellcheck disable=SC1090
    (. "$PYPI_NODE_CONFIG" && printf '%s\n' "${PYPI_BUNDLE_DIR:?}")
  fi
}

cmd_check() {
  bundle=$(bundle_dir "$@") || die "no bundle given, and $PYPI_NODE_CONFIG names none"
  [ -r "$bundle/manifest" ] || die "no manifest in $bundle"
  load_config "$bundle/files$PYPI_NODE_CONFIG"
  failed=0
  checked=""
  while IFS=$TAB read -r kind path _mode _owner _group validator _reloads _target; do
    if [ "$kind" != file ] || [ "$validator" = - ]; then continue; fi
    # Directory-wide validators check the whole tree once; count each file they cover.
    case " $checked " in
      *" $validator "*) ;;
      *)
        if out=$(validate_tool "$validator" "$bundle" "$bundle/files$path"); then
          status=ok
        else
          status=fail
        fi
        case $validator in nginx | apache | drbd) checked="$checked $validator" ;; esac
        eval "verdict_$validator=\$status"
        [ "$status" = ok ] || {
          failed=1
          log "$validator rejected $path: $out"
        }
        ;;
    esac
    eval "status=\$verdict_$validator"
    printf 'validated\t%s\t%s\t%s\n' "$validator" "$path" "$status"
  done <"$bundle/manifest"
  return "$failed"
}

# ---------------------------------------------------------------- verified reloads

# How long a reloaded daemon gets to show that it runs on the new files.
VERIFY_SECONDS=${PYPI_VERIFY_SECONDS:-3}

# Now, in the clock ticks since boot that /proc/PID/stat gives start times in: the start of the
# sed that reads its own stat (field 22; the name before it may hold spaces).
now_ticks() { sed 's/^.*) //' /proc/self/stat | cut -d ' ' -f 20; }

# True when the process in PIDFILE, or a child of it, started at or after tick MARK. A reload
# that took forks new workers (nginx, haproxy -W, apache2) or a new process; a failed one leaves
# the old ones serving the old configuration.
started_since() {
  sn_pid=$(head -n 1 "$1" 2>/dev/null | tr -d ' \t') || return 1
  [ -n "$sn_pid" ] && kill -0 "$sn_pid" 2>/dev/null || return 1
  # cat, not awk on the files: a process may exit between the glob and the read.
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v p="$sn_pid" -v m="$2" '
    { pid = $1; sub(/^[^(]*\(.*\) /, ""); if ((pid == p || $2 == p) && $20 + 0 >= m + 0) found = 1 }
    END { exit !found }'
}

# An ha.cf time in whole seconds (rounded up): plain seconds, or milliseconds with `ms`.
hacf_seconds() {
  awk -v k="$1" -v d="$2" '$1 == k { v = $2 } END {
    if (v == "") { print d; exit }
    ms = (v ~ /ms$/); sub(/m?s$/, "", v); v += 0
    if (ms) v /= 1000
    print int(v) + (v > int(v)) }' "$PYPI_HA_CF" 2>/dev/null || echo "$2"
}

file_size() { if [ -f "$1" ]; then echo $(($(wc -c <"$1"))); else echo 0; fi; }

# What FILE gained since it was SIZE bytes long (all of it if it was rotated meanwhile).
file_since() {
  [ -f "$1" ] || return 0
  if [ "$(file_size "$1")" -ge "$2" ]; then tail -c +"$(($2 + 1))" "$1"; else cat "$1"; fi
}

# Where a daemon reports errors it meets after its check passed (binding, re-reading ha.cf).
# Apache's is Debian's APACHE_LOG_DIR, which the rendered site uses but does not set.
service_log() {
  case $1 in
    nginx) echo "$PYPI_NGINX_ERROR_LOG" ;;
    apache2) echo /var/log/apache2/error.log ;;
    heartbeat) echo "$PYPI_HA_LOG" ;;
    postgresql) echo "$PYPI_PG_LOG" ;;
    *) echo "" ;;
  esac
}

# Whether SVC should run here. The lab's direct manager runs only the daemons it knows, less
# PYPI_DIRECT_SKIP; Postgres stays down where pg_may_start says so (no cluster yet, fenced).
service_expected() {
  if [ "$PYPI_SERVICE_MANAGER" = direct ]; then
    ! direct_skipped "$1" || return 1
    case $1 in nginx | haproxy | apache2 | ssh | heartbeat | postgresql | pypi-index-register | pypi-upload-watch) ;; *) return 1 ;; esac
  fi
  if [ "$1" = postgresql ] && ! svc_running postgresql && ! pg_may_start 2>/dev/null; then return 1; fi
  return 0
}

# Before SVC is reloaded or started: the time, and where its log stands. OUT is the file that
# takes the reload command's own output (a file, not a pipe: a daemon it starts keeps it open).
verify_begin() {
  VB_SVC=$1 VB_OUT=$2
  VB_MARK=$(now_ticks)
  VB_EPOCH=$(date +%s)
  VB_LOG=$(service_log "$1")
  VB_LOGSIZE=$(file_size "$VB_LOG")
  : >"$VB_OUT"
}

# What the daemon said since verify_begin, once each: its log's error lines, the reload
# command's output, and under systemd its journal (where haproxy and sshd write).
service_complaint() {
  {
    [ -z "$VB_LOG" ] || file_since "$VB_LOG" "$VB_LOGSIZE" |
      grep -E '(\[|:)(emerg|alert|crit|error)\]|ERROR|CRIT|Config errors|FATAL|PANIC' | tail -n 20
    [ ! -s "$VB_OUT" ] || tail -n 20 "$VB_OUT"
    if [ "$PYPI_SERVICE_MANAGER" = systemd ]; then
      set --
      for sc_unit in $(systemd_units "$VB_SVC"); do set -- "$@" -u "$sc_unit"; done
      journalctl -q --no-pager -o cat --since "@$VB_EPOCH" "$@" 2>/dev/null | tail -n 20
    fi
  } | awk '!seen[$0]++ { print "  " $0 }'
}

verify_failed() {
  log "$VB_SVC failed its check: $1"
  service_complaint >&2
}

# Heartbeat has no check mode. On HUP it re-reads ha.cf: "Configuration unchanged", or a restart
# (shutdown, re-exec) that ends with its media up ("Local status now set to: 'up'") or in "Config
# errors: Heartbeat NOT restarted" and an exit. "Starting heartbeat" proves nothing: the parent
# logs it before the daemon opens its media. A restart waits until the peer is heard (up to
# initdead) and resources settle, so a restart under way extends the wait.
verify_heartbeat() {
  vh_tries=$((VERIFY_SECONDS * 5)) vh_dead=0 vh_pending=no
  while :; do
    vh_new=$(file_since "$VB_LOG" "$VB_LOGSIZE")
    case $vh_new in
      *"Config errors"* | *"configuration error"* | *"Emergency Shutdown"*)
        # Its last words come as it exits.
        vh_tries=10
        while svc_running heartbeat && [ "$vh_tries" -gt 0 ]; do
          vh_tries=$((vh_tries - 1))
          sleep 0.2
        done
        verify_failed "it rejected ha.cf, or could not run on it"
        return 1
        ;;
    esac
    if svc_running heartbeat; then
      vh_dead=0
      case $vh_new in *"Configuration unchanged"* | *"status now set to: 'up'"*) return 0 ;; esac
    else
      # Two looks: the pid file changes hands when it re-executes into a new process.
      vh_dead=$((vh_dead + 1))
      [ "$vh_dead" -lt 2 ] || {
        verify_failed "it exited"
        return 1
      }
    fi
    case $vh_pending:$vh_new in
      no:*"Shutdown delayed"* | no:*"shutdown in progress"* | no:*"restart triggered"*)
        vh_pending=yes
        vh_tries=$((vh_tries + ($(hacf_seconds initdead 30) + $(hacf_seconds deadtime 10) + 10) * 5))
        ;;
    esac
    vh_tries=$((vh_tries - 1))
    if [ "$vh_tries" -le 0 ]; then
      # Alive and silent: nothing to wait for (or it logs elsewhere than ha.cf's logfile).
      [ "$vh_pending" = yes ] || return 0
      verify_failed "its restart did not finish"
      return 1
    fi
    sleep 0.2
  done
}

# verify_service SVC: SVC runs on the files just installed; verify_begin came before its reload
# or start. Fast when it does; bounded (VERIFY_SECONDS, or Heartbeat's own times) when not.
# `verify_within MESSAGE CMD...`: CMD holds within VERIFY_SECONDS (polled every 0.2 s), or MESSAGE.
verify_within() {
  vw_message=$1
  shift
  vw_tries=$((VERIFY_SECONDS * 5))
  until "$@"; do
    vw_tries=$((vw_tries - 1))
    [ "$vw_tries" -gt 0 ] || {
      verify_failed "$vw_message"
      return 1
    }
    sleep 0.2
  done
}

# The app server's primary runs and its workers listen on the socket Apache sends to.
app_server_listens() { svc_running pypi-index && [ -S "$PYPI_APP_SOCKET" ]; }

postgres_answers() {
  svc_running postgresql &&
    pgsql 'SELECT count(*) FROM pg_settings WHERE pending_restart' >/dev/null 2>>"$VB_OUT"
}

verify_service() {
  service_expected "$1" || return 0
  case $1 in
    nginx | haproxy | apache2)
      vs_pidfile=$(svc_pidfile "$1")
      verify_within "no new $1 process within $VERIFY_SECONDS s: the reload or start did not take" \
        started_since "$vs_pidfile" "$VB_MARK" || return 1
      ;;
    ssh)
      # sshd re-executes itself on HUP and exits if it cannot: it must stay up a while.
      vs_tries=5
      while [ "$vs_tries" -gt 0 ]; do
        svc_running ssh || {
          verify_failed "it exited"
          return 1
        }
        vs_tries=$((vs_tries - 1))
        sleep 0.2
      done
      ;;
    heartbeat) verify_heartbeat || return 1 ;;
    pypi-index) verify_within "no socket at $PYPI_APP_SOCKET within $VERIFY_SECONDS s" app_server_listens || return 1 ;;
    postgresql) verify_within "it does not answer queries" postgres_answers || return 1 ;;
    *)
      svc_running "$1" || {
        verify_failed "it is not running"
        return 1
      }
      ;;
  esac
}

# Heartbeat re-reads ha.cf on HUP only if its mtime, in whole seconds, differs from the one it
# last read, so a file replaced within the same second would be ignored ("Configuration
# unchanged"). NEW never shares the whole-second mtime of LIVE, the file it replaces.
distinct_mtime() {
  dm_live=$(stat -c %Y "$2" 2>/dev/null) || return 0
  [ "$(stat -c %Y "$1")" != "$dm_live" ] || touch -d "@$((dm_live + 1))" "$1"
}

# Pass 2 keeps what it replaces under SNAP, so a daemon that does not run on the new files gets
# the old ones back: SNAP/index lists each path as file, symlink (with its target) or absent,
# SNAP/files holds the copies.
snapshot_path() {
  if [ -z "$SNAP" ]; then
    SNAP=$SNAP_ROOT/$(date -u +%Y%m%dT%H%M%SZ)-$$
    mkdir -p "$SNAP/files"
    chmod 0700 "$SNAP_ROOT"
  fi
  if [ -L "$1" ]; then
    printf 'symlink\t%s\t%s\n' "$1" "$(readlink "$1")"
  elif [ -e "$1" ]; then
    mkdir -p "$SNAP/files$(dirname "$1")"
    cp -p "$1" "$SNAP/files$1"
    printf 'file\t%s\t-\n' "$1"
  else
    printf 'absent\t%s\t-\n' "$1"
  fi >>"$SNAP/index"
}

restore_snapshot() {
  while IFS=$TAB read -r rs_kind rs_path rs_target; do
    case $rs_kind in
      file)
        cp -p "$SNAP/files$rs_path" "$rs_path.pypi-node.$$"
        mv -f "$rs_path.pypi-node.$$" "$rs_path"
        ;;
      symlink) ln -sfn "$rs_target" "$rs_path" ;;
      absent) rm -f "$rs_path" ;;
    esac
    printf 'restored\t%s\t%s\n' "$rs_kind" "$rs_path"
  done <"$SNAP/index"
}

# A daemon that does not take a reload on the restored files gets a restart on them (svc_stop
# waits for the old process).
restart_verified() {
  if svc_running "$1"; then svc_stop "$1" >>"$VB_OUT" 2>&1 || true; fi
  verify_begin "$1" "$VB_OUT"
  svc_start "$1" >>"$VB_OUT" 2>&1 && verify_service "$1"
}

# FAILED does not run on the new files: put the previous files back, bring every daemon this
# apply reloaded back onto them (or stop it, if it was not running before), and exit non-zero.
apply_rollback() {
  ar_failed=$1
  log "restoring the files this apply replaced (kept in $SNAP)"
  restore_snapshot
  ar_bad=""
  for ar_svc in $RELOADED; do
    case " $RUNNING_BEFORE " in
      *" $ar_svc "*)
        verify_begin "$ar_svc" "$APPLY_TMP/$ar_svc.restore"
        if { svc_reload "$ar_svc" >>"$VB_OUT" 2>&1 && verify_service "$ar_svc"; } || restart_verified "$ar_svc"; then
          printf 'reverted\t%s\n' "$ar_svc"
        else
          ar_bad="$ar_bad $ar_svc"
        fi
        ;;
      *) if svc_running "$ar_svc"; then svc_stop "$ar_svc" >&2 || ar_bad="$ar_bad $ar_svc"; fi ;;
    esac
  done
  [ -z "$ar_bad" ] || die "$ar_failed does not run on the new files; the previous files are back, but$ar_bad do not run on them either"
  die "$ar_failed does not run on the new files; the previous files are back and running"
}

# The bundle itself is wrong (a daemon rejects a file, a reload does not take, an expired
# certificate): retrying it cannot help, so the bootstrap stops at this status.
APPLY_REFUSED=3
refuse() {
  log "error: $*"
  exit "$APPLY_REFUSED"
}

cmd_apply() {
  # First boot (cloud-init) and a rollout (SSM) can overlap; one apply at a time.
  if [ -z "${PYPI_NODE_LOCKED:-}" ] && command -v flock >/dev/null; then
    export PYPI_NODE_LOCKED=1
    # -o: daemons the apply starts must not inherit the lock.
    exec flock -o /run/pypi-node.lock sh "$0" apply "$@"
  fi
  bundle=$(bundle_dir "$@") || die "no bundle given, and $PYPI_NODE_CONFIG names none"
  [ -r "$bundle/manifest" ] || die "no manifest in $bundle"
  load_config "$bundle/files$PYPI_NODE_CONFIG"
  RELOAD=""
  RESTART=""
  changed=0
  rejected=0
  validated=""
  install_packages "$bundle"
  disable_balancer_sshd
  ensure_upload_users
  install_secrets "$bundle"
  # Pass 1: validate every changed candidate; nothing is installed if any is rejected.
  while IFS=$TAB read -r kind path _mode _owner _group validator _reloads target; do
    case $kind in
      file) same_content "$bundle/files$path" "$path" && continue ;;
      symlink) same_link "$path" "$target" && continue ;;
      absent) [ -e "$path" ] || [ -L "$path" ] || continue ;;
    esac
    # A symlink or removal under a daemon's config dir changes what that daemon loads too.
    [ "$validator" != - ] || validator=$(tree_validator "$path")
    [ -n "$validator" ] || continue
    case " $validated " in *" $validator "*) continue ;; esac
    case $validator in nginx | apache | drbd) validated="$validated $validator" ;; esac
    [ "$kind" = file ] || candidate=$(first_file_for "$bundle" "$validator") || continue
    [ "$kind" != file ] || candidate="$bundle/files$path"
    if ! out=$(validate_tool "$validator" "$bundle" "$candidate"); then
      log "rejected $path ($validator): $out"
      rejected=1
    fi
  done <"$bundle/manifest"
  [ "$rejected" = 0 ] || refuse "candidate rejected; live configuration left untouched"

  # Pass 2: install atomically (temp file in the same dir, then rename), keeping what it replaces.
  SNAP_ROOT=$PYPI_AGENT_STATE/previous
  SNAP=""
  while IFS=$TAB read -r kind path mode owner group _validator reloads target; do
    case $kind in
      file)
        same_content "$bundle/files$path" "$path" && continue
        snapshot_path "$path"
        mkdir -p "$(dirname "$path")"
        tmp="$path.pypi-node.$$"
        cp "$bundle/files$path" "$tmp"
        chown "$owner:$group" "$tmp"
        chmod "$mode" "$tmp"
        distinct_mtime "$tmp" "$path"
        mv -f "$tmp" "$path"
        ;;
      symlink)
        same_link "$path" "$target" && continue
        snapshot_path "$path"
        mkdir -p "$(dirname "$path")"
        ln -sfn "$target" "$path"
        ;;
      absent)
        [ -e "$path" ] || [ -L "$path" ] || continue
        snapshot_path "$path"
        rm -f "$path"
        ;;
    esac
    printf 'changed\t%s\t%s\n' "$kind" "$path"
    changed=$((changed + 1))
    add_reloads "$reloads"
    # A module added on a graceful restart skips its first-load setup (mod_fcgid starts no
    # process manager): a new module set needs a full restart.
    case $path in "${PYPI_APACHE_DIR:-/nonexistent}"/mods-enabled/*) RESTART="$RESTART apache2" ;; esac
  done <"$bundle/manifest"

  # Every reload is verified; one that does not run on the new files undoes the whole apply.
  APPLY_TMP=$(mktemp -d)
  trap 'rm -rf "$APPLY_TMP"' EXIT
  RELOADED=""
  RUNNING_BEFORE=""
  # shellcheck disable=SC2086
  for svc in $(in_service_order "$bundle" $RELOAD); do
    if svc_running "$svc"; then RUNNING_BEFORE="$RUNNING_BEFORE $svc"; fi
    RELOADED="$RELOADED $svc"
    verify_begin "$svc" "$APPLY_TMP/$svc.reload"
    case " $RESTART " in *" $svc "*) how=svc_restart ;; *) how=svc_reload ;; esac
    if $how "$svc" >>"$VB_OUT" 2>&1; then
      if verify_service "$svc"; then
        cat "$VB_OUT" >&2
        printf 'reloaded\t%s\n' "$svc"
        continue
      fi
    else
      log "reload of $svc failed:"
      service_complaint >&2
    fi
    if [ -n "$SNAP" ]; then apply_rollback "$svc"; fi
    refuse "$svc does not run on its new configuration; only secrets changed, and they are not rolled back"
  done

  # Then every service of the bundle runs, whether or not this apply touched it: a rollout that
  # re-runs apply after a failure must not find the files in place and report success.
  if [ "${PYPI_APPLY_START:-yes}" = yes ] && [ -r "$bundle/services" ]; then
    not_running=""
    # A list of words, read up front: what the loop runs must not read it from stdin.
    services=$(cat "$bundle/services")
    for svc in $services; do
      if svc_running "$svc"; then
        # Started by a reload above (a service new to this node): enabled like the rest.
        svc_enable "$svc"
        continue
      fi
      verify_begin "$svc" "$APPLY_TMP/$svc.start"
      if svc_start "$svc" >>"$VB_OUT" 2>&1; then
        if verify_service "$svc"; then
          cat "$VB_OUT" >&2
          # A service this node does not run here (service_expected) was left down on purpose.
          if svc_running "$svc"; then printf 'started\t%s\n' "$svc"; fi
          continue
        fi
      else
        log "start of $svc failed:"
        service_complaint >&2
      fi
      not_running="$not_running $svc"
    done
    [ -z "$not_running" ] || die "not running:$not_running"
    # Last, once what replaces them runs: services this node no longer runs (a runtime switch).
    if [ -r "$bundle/stopped" ]; then
      stopped=$(cat "$bundle/stopped")
      for svc in $stopped; do
        if svc_running "$svc"; then
          svc_stop "$svc" >&2 || die "$svc: stop failed"
          printf 'stopped\t%s\n' "$svc"
        fi
        svc_disable "$svc"
      done
    fi
  fi
  if [ -n "$SNAP" ]; then
    # The newest ten snapshots stay, for an operator going back further.
    find "$SNAP_ROOT" -mindepth 1 -maxdepth 1 -type d | sort -r | tail -n +11 | while read -r old; do rm -rf "$old"; done
  fi
  printf 'applied\t%s changes\n' "$changed"
}

# The outcome of an apply, for the health model: a refused candidate leaves apply-refused (when,
# and the agent's last complaint) until an apply succeeds.
apply_recorded() {
  if [ -n "${PYPI_NODE_LOCKED:-}" ]; then
    cmd_apply "$@"
    return
  fi
  ar_err=$(mktemp)
  ar_status=0
  (cmd_apply "$@") 2>"$ar_err" || ar_status=$?
  cat "$ar_err" >&2
  # The installed config (a first apply that failed has none: its node publishes no health yet).
  if ! [ -r "$PYPI_NODE_CONFIG" ]; then
    rm -f "$ar_err"
    return "$ar_status"
  fi
  load_config
  mkdir -p "$PYPI_AGENT_STATE"
  if [ "$ar_status" = 0 ]; then
    rm -f "$PYPI_AGENT_STATE/apply-refused"
    date +%s >"$PYPI_AGENT_STATE/apply-ok"
  else
    { date +%s; grep 'error:\|rejected' "$ar_err" | tail -n 5; } >"$PYPI_AGENT_STATE/apply-refused"
  fi
  rm -f "$ar_err"
  return "$ar_status"
}

# Why the newest candidate was refused (if it was), and when the live bundle was applied.
cmd_bundle_check() {
  now=$(date +%s)
  if [ -r "$PYPI_AGENT_STATE/apply-ok" ]; then
    read -r ok_at <"$PYPI_AGENT_STATE/apply-ok"
    printf 'applied\t%s s ago\n' "$((now - ok_at))"
  else
    printf 'applied\tnever recorded\n'
  fi
  if [ -s "$PYPI_AGENT_STATE/apply-refused" ]; then
    read -r refused_at <"$PYPI_AGENT_STATE/apply-refused"
    printf 'refused\t%s s ago\n' "$((now - refused_at))"
    tail -n +2 "$PYPI_AGENT_STATE/apply-refused" | sed 's/^/reason\t/'
  else
    printf 'refused\tnone\n'
  fi
}

cmd_service() {
  case $2 in
    start) svc_start "$1" ;;
    stop) svc_stop "$1" ;;
    restart) if svc_running "$1"; then svc_stop "$1"; fi && svc_start "$1" ;;
    status) if svc_running "$1"; then echo "$1 running"; else echo "$1 stopped"; fi ;;
    *) die "service NAME start|stop|restart|status" ;;
  esac
}

# ---------------------------------------------------------------- status

cmd_status() {
  printf 'node\t%s\nrole\t%s\nbackend\t%s\n' "$PYPI_NODE" "$PYPI_ROLE" "$PYPI_BACKEND"
  for svc in ${PYPI_SERVICES:-}; do
    if svc_running "$svc"; then s=running; else s=stopped; fi
    printf 'service\t%s\t%s\n' "$svc" "$s"
  done
  case $PYPI_ROLE in
    balancer) for triple in $PYPI_FIPS; do
      addr=${triple%%=*}
      printf 'fip\t%s\t%s\n' "$addr" "$("$PYPI_FIP_SCRIPT" "$addr" status)"
    done ;;
    db) "$PYPI_DB_TOOL" status ;;
    app)
      if [ "$PYPI_STORAGE_ROLE" != none ]; then
        printf 'storage\t%s\t%s\n' "$PYPI_OVERLAY_STORAGE" "$("$PYPI_OVERLAY_SCRIPT" "$PYPI_OVERLAY_STORAGE" status)"
      fi
      ;;
  esac
}

usage() {
  cat >&2 <<'EOF'
usage: pypi-node COMMAND
  apply [BUNDLE_DIR]          validate changed files, install them, reload what changed
  check [BUNDLE_DIR]          validate every file of a bundle without installing
  status                      services, addresses and database role of this node
  bundle-check                why the newest bundle was refused, if it was
  service NAME start|stop|restart|status
The role's tools, under the names the runbooks use:
  converge                    after apply, at every boot: this node's place (pypi-db, pypi-app or pypi-balancer)
  health [--publish]          this node's checks as JSON (pypi-health)
  disk-report | volume-grow data|root                  (pypi-volume report | grow)
  fip ADDRESS start|stop|status                        (balancer: pypi-fip)
  watch | upload-backend enable|disable NODE | upload-backends [--wait NODE]   (balancer: pypi-balancer)
  overlay ADDRESS take|release|status|holder           (db, storage pair: pypi-overlay)
  nfs start|stop|status                                (storage pair: pypi-nfs)
  db-fence | db-promote | db-reattach | db-sync on|off | db-replication [--wait NAME] | db-status
  db-backup full|diff|incr | db-archive-check | db-restore-test | db-restore [--force]
  db-pitr TIME | db-scratch-sql SQL | db-scratch-stop  (db: pypi-db COMMAND)
  db-writer-check | storage-check | package-layout DIR | app-migrate | register
  files-copy | files-restore [--all]                   (app: pypi-app)
EOF
  exit 2
}

# A role's verbs live in the role's tool, shipped only to that role's nodes.
role_exec() {
  re_role=$1 re_tool=$2
  shift 2
  [ "$PYPI_ROLE" = "$re_role" ] || die "$command runs on a $re_role node, not on a $PYPI_ROLE"
  exec "$re_tool" "$@"
}

main() {
  [ $# -ge 1 ] || usage
  command=$1
  shift
  case $command in
    check) cmd_check "$@" ;;
    apply) apply_recorded "$@" ;;
    *) load_config ;;
  esac
  case $command in
    check | apply) ;;
    status) cmd_status ;;
    bundle-check) cmd_bundle_check ;;
    service) [ $# -eq 2 ] || usage && cmd_service "$1" "$2" ;;
    health) exec "$PYPI_HEALTH_TOOL" "$@" ;;
    disk-report) exec "$PYPI_VOLUME_TOOL" report ;;
    volume-grow) exec "$PYPI_VOLUME_TOOL" grow "$@" ;;
    converge)
      case $PYPI_ROLE in
        db) exec "$PYPI_DB_TOOL" converge ;;
        app) exec "$PYPI_APP_TOOL" converge ;;
        balancer) exec "$PYPI_BALANCER_TOOL" converge ;;
      esac
      ;;
    fip) role_exec balancer "${PYPI_FIP_SCRIPT:-}" "$@" ;;
    watch | upload-backend | upload-backends) role_exec balancer "${PYPI_BALANCER_TOOL:-}" "$command" "$@" ;;
    overlay)
      [ -n "${PYPI_OVERLAY_SCRIPT:-}" ] || die "overlay: $PYPI_NODE holds no overlay address"
      exec "$PYPI_OVERLAY_SCRIPT" "$@"
      ;;
    nfs)
      [ -n "${PYPI_NFS_SCRIPT:-}" ] || die "nfs: $PYPI_NODE is not in the storage pair"
      exec "$PYPI_NFS_SCRIPT" "$@"
      ;;
    db-writer-check) role_exec app "${PYPI_APP_TOOL:-}" writer-check ;;
    db-*) role_exec db "${PYPI_DB_TOOL:-}" "${command#db-}" "$@" ;;
    storage-check | package-layout | register | files-copy | files-restore) role_exec app "${PYPI_APP_TOOL:-}" "$command" "$@" ;;
    app-migrate) role_exec app "${PYPI_APP_TOOL:-}" migrate ;;
    *) usage ;;
  esac
}

main "$@"

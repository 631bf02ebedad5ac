#!/bin/sh
# pypi-node: the node agent. Installs config bundles (validating every candidate with its
# daemon before it replaces the live file) and carries out the failover actions the
# runbooks call. Every cloud action has an `aws` and a `lab` backend, chosen by node.env.
set -eu

# shellcheck source=/dev/null
. "$PYPI_LIB"

PYPI_BUNDLE_DIR_DEFAULT=/var/lib/pypi-node/incoming
TAB=$(printf '\t')

# ---------------------------------------------------------------- validation

# POSIX sh has no locals, hence the prefixed names.
# Copy a daemon's config dir and overlay every candidate of the bundle that lives in it,
# so the daemon checks the configuration it would really load.
stage_confdir() {
  sd_bundle=$1 sd_confdir=$2 sd_stage=$3
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
      stage_confdir "$bundle" /etc/nginx "$stage"
      rc=0
      nginx -t -q -c "$stage/nginx.conf" 2>&1 || rc=$?
      rm -rf "$stage"
      return "$rc"
      ;;
    apache)
      stage=$(mktemp -d)
      stage_confdir "$bundle" /etc/apache2 "$stage"
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
      stage_confdir "$bundle" /etc/drbd.d "$stage/drbd.d"
      printf 'include "%s/drbd.d/global_common.conf";\ninclude "%s/drbd.d/*.res";\n' "$stage" "$stage" \
        >"$stage/drbd.conf"
      rc=0
      "$drbdadm84" -c "$stage/drbd.conf" -d up all >/dev/null 2>"$stage/err" || rc=$?
      cat "$stage/err"
      rm -rf "$stage"
      return "$rc"
      ;;
    exportfs)
      # exportfs reads only /etc/exports, so check the candidate in a private mount namespace.
      # shellcheck disable=SC2016
      unshare --mount --propagation private sh -c '
        mount --bind "$1" /etc/exports && mount -t tmpfs tmpfs /var/lib/nfs &&
          touch /var/lib/nfs/etab /var/lib/nfs/rmtab && exportfs -ra' exportfs-check "$candidate" 2>&1
      ;;
    sh) sh -n "$candidate" 2>&1 ;;
    *) die "unknown validator $tool" ;;
  esac
}

# ---------------------------------------------------------------- apply / check

# The directory-wide validator that covers a path, if any.
tree_validator() {
  case $1 in
    /etc/nginx/*) echo nginx ;;
    /etc/apache2/*) echo apache ;;
    /etc/drbd.d/*) echo drbd ;;
    *) echo "" ;;
  esac
}

# Some file of the bundle checked by VALIDATOR, for changes that are not files themselves.
first_file_for() {
  ff_file=$(awk -F '\t' -v v="$2" '$1 == "file" && $6 == v { print $2; exit }' "$1/manifest")
  [ -n "$ff_file" ] && printf '%s\n' "$1/files$ff_file"
}

same_content() { [ -e "$2" ] && cmp -s "$1" "$2"; }

same_link() { [ -L "$1" ] && [ "$(readlink "$1")" = "$2" ]; }

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
    chown "$owner:$group" "$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
    # sshd refuses a host key whose .pub (the image's own) does not match it.
    case $path in /etc/ssh/ssh_host_*_key) ssh-keygen -y -f "$path" >"$path.pub" ;; esac
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

cmd_check() {
  bundle=${1:-$PYPI_BUNDLE_DIR_DEFAULT}
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

cmd_apply() {
  # First boot (cloud-init) and a rollout (SSM) can overlap; one apply at a time.
  if [ -z "${PYPI_NODE_LOCKED:-}" ] && command -v flock >/dev/null; then
    export PYPI_NODE_LOCKED=1
    # -o: daemons the apply starts must not inherit the lock.
    exec flock -o /run/pypi-node.lock sh "$0" apply "$@"
  fi
  bundle=${1:-$PYPI_BUNDLE_DIR_DEFAULT}
  [ -r "$bundle/manifest" ] || die "no manifest in $bundle"
  load_config "$bundle/files$PYPI_NODE_CONFIG"
  RELOAD=""
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
  [ "$rejected" = 0 ] || die "candidate rejected; live configuration left untouched"

  # Pass 2: install atomically (temp file in the same dir, then rename).
  while IFS=$TAB read -r kind path mode owner group _validator reloads target; do
    case $kind in
      file)
        same_content "$bundle/files$path" "$path" && continue
        mkdir -p "$(dirname "$path")"
        tmp="$path.pypi-node.$$"
        cp "$bundle/files$path" "$tmp"
        chown "$owner:$group" "$tmp"
        chmod "$mode" "$tmp"
        mv -f "$tmp" "$path"
        ;;
      symlink)
        same_link "$path" "$target" && continue
        mkdir -p "$(dirname "$path")"
        ln -sfn "$target" "$path"
        ;;
      absent)
        [ -e "$path" ] || [ -L "$path" ] || continue
        rm -f "$path"
        ;;
    esac
    printf 'changed\t%s\t%s\n' "$kind" "$path"
    changed=$((changed + 1))
    add_reloads "$reloads"
  done <"$bundle/manifest"

  for svc in $RELOAD; do
    if svc_reload "$svc"; then printf 'reloaded\t%s\n' "$svc"; else die "reload of $svc failed"; fi
  done
  [ "${PYPI_APPLY_START:-yes}" = yes ] && [ -r "$bundle/services" ] && while read -r svc; do
    svc_running "$svc" || {
      svc_start "$svc"
      printf 'started\t%s\n' "$svc"
    }
  done <"$bundle/services"
  printf 'applied\t%s changes\n' "$changed"
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

# Run on an app server: the writer address must reach a primary that accepts writes.
cmd_db_writer_check() {
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

cmd_service() {
  case $2 in
    start) svc_start "$1" ;;
    stop) svc_stop "$1" ;;
    restart) if svc_running "$1"; then svc_stop "$1"; fi && svc_start "$1" ;;
    status) if svc_running "$1"; then echo "$1 running"; else echo "$1 stopped"; fi ;;
    *) die "service NAME start|stop|restart|status" ;;
  esac
}

# ---------------------------------------------------------------- balancer watchdog

# Heartbeat v1 watches only its peer, not the resources: a dead nginx under a floating IP would
# go unnoticed. Heartbeat runs this loop (ha.cf `respawn`) and restarts it if it exits. It
# restarts nginx, and if nginx cannot run here it hands this node's floating IPs to the peer.
# An operator pauses it (e.g. to stop nginx on purpose) by creating PYPI_WATCH_PAUSE.
cmd_watch() {
  [ "$PYPI_ROLE" = balancer ] || die "watch runs on balancers"
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
      if [ "$watch_handed" = yes ] && grep -Eq '^auto_failback[[:space:]]+on' /etc/ha.d/ha.cf; then
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
    db)
      printf 'writer\t%s\t%s\n' "$PYPI_OVERLAY_DB" "$(cmd_overlay "$PYPI_OVERLAY_DB" status)"
      if svc_running postgresql; then
        if [ "$(pg_in_recovery)" = t ]; then r=standby; else r=primary; fi
        printf 'postgres\t%s\n' "$r"
      fi
      ;;
    app) printf 'storage\t%s\t%s\n' "$PYPI_OVERLAY_STORAGE" "$(cmd_overlay "$PYPI_OVERLAY_STORAGE" status)" ;;
  esac
}

usage() {
  cat >&2 <<'EOF'
usage: pypi-node COMMAND
  apply [BUNDLE_DIR]          validate changed files, install them, reload what changed
  check [BUNDLE_DIR]          validate every file of a bundle without installing
  status                      services, addresses and database role of this node
  fip ADDRESS start|stop|status        floating IP (Heartbeat resource-script form)
  overlay ADDRESS take|release|status  overlay IP (writer or storage address)
  nfs start|stop|status       NFS server for the storage pair
  db-init                     (db) first bring-up as PYPI_PG_INITIAL_ROLE; no-op once done
  db-fence | db-promote | db-reattach | db-sync on|off | db-replication
  db-writer-check             (app) the writer address reaches a writable primary
  storage-check               (app) the package root is mounted and writable
  package-layout DIR          create the package volume's directories and ownership
  app-migrate | register      (app) the index app's schema migrations / upload registration
  upload-backend enable|disable NODE | upload-backends
  service NAME start|stop|restart|status
  watch                       (balancer) keep nginx running under the floating IPs (Heartbeat respawns it)
EOF
  exit 2
}

APP_ENV=/etc/pypi-index/env
APP_SCRIPT=/opt/pypi-index/index.fcgi

# Runs the index app's CLI as www-data with the environment Apache gives it.
app_cli() {
  (
    set -a
    # shellcheck disable=SC1090
    . "$APP_ENV"
    set +a
    exec runuser -u www-data -- "$APP_SCRIPT" "$@"
  )
}


main() {
  [ $# -ge 1 ] || usage
  command=$1
  shift
  case $command in
    check) cmd_check "$@" ;;
    apply) cmd_apply "$@" ;;
    *) load_config ;;
  esac
  PYPI_AGENT_STATE=${PYPI_AGENT_STATE:-/var/lib/pypi-node}
  case $command in
    check | apply) ;;
    status) cmd_status ;;
    fip) exec "$PYPI_FIP_SCRIPT" "$@" ;;
    overlay) [ $# -eq 2 ] || usage && cmd_overlay "$1" "$2" ;;
    nfs) exec "$PYPI_NFS_SCRIPT" "$@" ;;
    db-init | db-fence | db-promote | db-reattach | db-sync | db-replication) exec "$PYPI_DB_TOOL" "${command#db-}" "$@" ;;
    upload-backend) [ $# -eq 2 ] || usage && cmd_upload_backend "$1" "$2" ;;
    upload-backends) cmd_upload_backends ;;
    db-writer-check) cmd_db_writer_check ;;
    storage-check) cmd_storage_check ;;
    package-layout) [ $# -eq 1 ] || usage && ensure_package_layout "$1" ;;
    app-migrate) app_cli migrate ;;
    register) app_cli register ;;
    service) [ $# -eq 2 ] || usage && cmd_service "$1" "$2" ;;
    watch) cmd_watch ;;
    *) usage ;;
  esac
}

main "$@"

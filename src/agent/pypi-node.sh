#!/bin/sh
# pypi-node: the node agent. Installs config bundles (validating every candidate with its
# daemon before it replaces the live file) and carries out the failover actions the
# runbooks call. Every cloud action has an `aws` and a `lab` backend, chosen by node.env.
set -eu

PYPI_NODE_CONFIG=${PYPI_NODE_CONFIG:-/etc/pypi-node/node.env}
PYPI_BUNDLE_DIR_DEFAULT=/var/lib/pypi-node/incoming
TAB=$(printf '\t')

log() { printf '%s\n' "pypi-node: $*" >&2; }
die() { log "error: $*"; exit 1; }

load_config() {
  config=${1:-$PYPI_NODE_CONFIG}
  [ -r "$config" ] || die "config $config not readable"
  # shellcheck disable=SC1090
  . "$config"
  : "${PYPI_BACKEND:?} ${PYPI_NODE:?} ${PYPI_ROLE:?} ${PYPI_IFACE:?}"
  PYPI_SERVICE_MANAGER=${PYPI_SERVICE_MANAGER:-systemd}
}

# ---------------------------------------------------------------- AWS plumbing (IMDSv2)

imds() {
  token=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
    http://169.254.169.254/latest/api/token) || die "IMDSv2 token request failed"
  curl -sf -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1" ||
    die "IMDS lookup $1 failed"
}

own_eni() {
  mac=$(imds mac)
  imds "network/interfaces/macs/$mac/interface-id"
}

awsc() { aws --region "$PYPI_REGION" --output text "$@"; }

# ---------------------------------------------------------------- service control

svc_running() {
  # shellcheck disable=SC2046
  case $PYPI_SERVICE_MANAGER in
    systemd) systemctl is-active --quiet $(systemd_units "$1") ;;
    direct) direct_running "$1" ;;
  esac
}

svc_reload() {
  # shellcheck disable=SC2046
  case $PYPI_SERVICE_MANAGER in
    systemd) systemctl daemon-reload && systemctl reload-or-restart $(systemd_units "$1") ;;
    direct) direct_reload "$1" ;;
  esac
}

# Unit names under systemd for services that are not a single .service.
systemd_units() {
  case $1 in
    pypi-index-register) echo "pypi-index-register.path pypi-index-register.timer" ;;
    *) echo "$1" ;;
  esac
}

svc_start() {
  if [ "$1" = postgresql ] && ! pg_may_start; then return 0; fi
  # shellcheck disable=SC2046
  case $PYPI_SERVICE_MANAGER in
    systemd) systemctl enable --now $(systemd_units "$1") ;;
    direct) direct_start "$1" ;;
  esac
}

svc_stop() {
  case $PYPI_SERVICE_MANAGER in
    systemd) systemctl stop "$1" ;;
    direct) direct_stop "$1" ;;
  esac
}

pid_alive() { [ -r "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

pg() {
  tool=$1
  shift
  runuser -u postgres -- "$PYPI_PG_BIN/$tool" "$@"
}
pgsql() { runuser -u postgres -- psql -X -q -At -p "$PYPI_PG_PORT" -h /var/run/postgresql -d postgres -c "$1"; }
pg_ctl_() { runuser -u postgres -- "$PYPI_PG_BIN/pg_ctl" -D "$PYPI_PG_DATA" "$@"; }

# Without systemd (the lab), daemons are started and signalled directly.
direct_running() {
  case $1 in
    nginx) pid_alive /run/nginx.pid ;;
    haproxy) pid_alive /run/haproxy.pid ;;
    apache2) pid_alive /run/apache2/apache2.pid ;;
    ssh) pid_alive /run/sshd.pid ;;
    heartbeat) pid_alive /run/heartbeat.pid ;;
    postgresql) pg_ctl_ status >/dev/null 2>&1 ;;
    *) return 1 ;;
  esac
}

# A lab that cannot run a service (the storage pair's Heartbeat without DRBD) lists it here.
direct_skipped() { case " ${PYPI_DIRECT_SKIP:-} " in *" $1 "*) return 0 ;; esac; return 1; }

direct_start() {
  if direct_skipped "$1"; then
    log "$1 is not run on this node (PYPI_DIRECT_SKIP); skipped"
    return 0
  fi
  case $1 in
    nginx) nginx ;;
    haproxy) mkdir -p /run/haproxy && haproxy -D -p /run/haproxy.pid -f /etc/haproxy/haproxy.cfg ;;
    apache2) mkdir -p /run/apache2 /var/log/apache2 && apache2ctl start ;;
    ssh) mkdir -p /run/sshd && /usr/sbin/sshd ;;
    heartbeat) /usr/libexec/heartbeat/heartbeat ;;
    postgresql) pg_direct_start ;;
    *) log "no direct start for $1; skipped" ;;
  esac
}

direct_reload() {
  direct_running "$1" || {
    direct_start "$1"
    return
  }
  case $1 in
    nginx) nginx -s reload ;;
    haproxy) kill -USR2 "$(cat /run/haproxy.pid)" ;;
    apache2) apache2ctl graceful ;;
    ssh) kill -HUP "$(cat /run/sshd.pid)" ;;
    heartbeat) kill -HUP "$(cat /run/heartbeat.pid)" ;;
    postgresql) pg_ctl_ reload >/dev/null ;;
    *) log "no direct reload for $1; skipped" ;;
  esac
}

direct_stop() {
  case $1 in
    nginx) nginx -s quit ;;
    haproxy) kill "$(cat /run/haproxy.pid)" ;;
    apache2) apache2ctl graceful-stop ;;
    ssh) kill "$(cat /run/sshd.pid)" ;;
    heartbeat) /usr/libexec/heartbeat/heartbeat -k ;;
    postgresql) pg_ctl_ -w -m fast stop >/dev/null ;;
    *) log "no direct stop for $1; skipped" ;;
  esac
}

# ---------------------------------------------------------------- secrets

secret_value() {
  case $PYPI_BACKEND in
    aws) awsc ssm get-parameter --name "$1" --with-decryption --query Parameter.Value ;;
    lab) cat "${PYPI_SECRETS_DIR:?}/$1" ;;
  esac
}

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

# ---------------------------------------------------------------- floating IPs

# PYPI_FIPS holds "address=allocation=secondary-ip" triples, one per floating IP.
fip_field() {
  for triple in $PYPI_FIPS; do
    case $triple in "$1="*)
      printf '%s\n' "$triple" | cut -d= -f"$2"
      return 0
      ;;
    esac
  done
  die "$1 is not a floating IP of this stack"
}

lab_addr_held() { ip -o addr show dev "$PYPI_IFACE" | grep -q " $1/"; }

cmd_fip() {
  addr=$1 action=$2
  alloc=$(fip_field "$addr" 2)
  secondary=$(fip_field "$addr" 3)
  case $PYPI_BACKEND:$action in
    lab:start)
      lab_addr_held "$addr" || ip addr add "$addr/32" dev "$PYPI_IFACE"
      # Gratuitous ARP so peers update their caches now rather than after a timeout.
      arping -q -U -c 2 -w 1 -I "$PYPI_IFACE" "$addr" || true
      ;;
    lab:stop) if lab_addr_held "$addr"; then ip addr del "$addr/32" dev "$PYPI_IFACE"; fi ;;
    lab:status) if lab_addr_held "$addr"; then echo running; else echo stopped; fi ;;
    aws:start)
      ip -o addr show dev "$PYPI_IFACE" | grep -q " $secondary/" ||
        ip addr add "$secondary/${PYPI_SUBNET_PREFIX:-24}" dev "$PYPI_IFACE"
      awsc ec2 associate-address --allocation-id "$alloc" --network-interface-id "$(own_eni)" \
        --private-ip-address "$secondary" --allow-reassociation >/dev/null
      ;;
    aws:stop)
      holder=$(awsc ec2 describe-addresses --allocation-ids "$alloc" \
        --query 'Addresses[0].NetworkInterfaceId')
      if [ "$holder" = "$(own_eni)" ]; then
        assoc=$(awsc ec2 describe-addresses --allocation-ids "$alloc" --query 'Addresses[0].AssociationId')
        awsc ec2 disassociate-address --association-id "$assoc"
      fi
      ;;
    aws:status)
      holder=$(awsc ec2 describe-addresses --allocation-ids "$alloc" \
        --query 'Addresses[0].NetworkInterfaceId')
      if [ "$holder" = "$(own_eni)" ]; then echo running; else echo stopped; fi
      ;;
    *) die "fip: unknown action $action (start|stop|status)" ;;
  esac
}

# ---------------------------------------------------------------- overlay IPs

cmd_overlay() {
  addr=$1 action=$2
  case $PYPI_BACKEND:$action in
    lab:start | lab:take)
      lab_addr_held "$addr" || ip addr add "$addr/32" dev "$PYPI_IFACE"
      arping -q -U -c 2 -w 1 -I "$PYPI_IFACE" "$addr" || true
      ;;
    lab:stop | lab:release) if lab_addr_held "$addr"; then ip addr del "$addr/32" dev "$PYPI_IFACE"; fi ;;
    lab:status) if lab_addr_held "$addr"; then echo running; else echo stopped; fi ;;
    aws:start | aws:take)
      ip -o addr show dev lo | grep -q " $addr/" || ip addr add "$addr/32" dev lo
      eni=$(own_eni)
      for rtb in $PYPI_ROUTE_TABLES; do
        awsc ec2 replace-route --route-table-id "$rtb" --destination-cidr-block "$addr/32" \
          --network-interface-id "$eni" >/dev/null
      done
      ;;
    aws:stop | aws:release) if ip -o addr show dev lo | grep -q " $addr/"; then ip addr del "$addr/32" dev lo; fi ;;
    aws:status)
      eni=$(own_eni)
      for rtb in $PYPI_ROUTE_TABLES; do
        target=$(awsc ec2 describe-route-tables --route-table-ids "$rtb" \
          --query "RouteTables[0].Routes[?DestinationCidrBlock=='$addr/32'].NetworkInterfaceId | [0]")
        [ "$target" = "$eni" ] || {
          echo stopped
          return 0
        }
      done
      echo running
      ;;
    *) die "overlay: unknown action $action (take|release|status)" ;;
  esac
}

# ---------------------------------------------------------------- Postgres

# Variables of these functions carry a pg_ prefix: POSIX sh has no locals.
PG_SOCKET_DIR=/var/run/postgresql
PG_RECOVERY_TEMPLATE=/etc/pypi-node/postgres/recovery.conf

# Client tools from the server's bin dir when it has them, else Debian's newest: its clients
# talk to older servers, and pg_wrapper would pick a version from the local clusters instead.
pg_client() {
  pg_tool=$1
  shift
  if [ -x "$PYPI_PG_BIN/$pg_tool" ]; then
    pg_tool_path=$PYPI_PG_BIN/$pg_tool
  else
    pg_tool_path=$(printf '%s\n' /usr/lib/postgresql/*/bin/"$pg_tool" | sort -V | tail -n 1)
    [ -x "$pg_tool_path" ] || die "no $pg_tool in $PYPI_PG_BIN or /usr/lib/postgresql"
  fi
  runuser -u postgres -- "$pg_tool_path" "$@"
}

# SQL from stdin as the postgres superuser over the local socket; stops at the first error.
# Passwords travel this way, never on a command line.
pg_sql() {
  pg_client psql -X -q -At -v ON_ERROR_STOP=1 -h "$PG_SOCKET_DIR" -p "$PYPI_PG_PORT" -d "${1:-postgres}"
}

# A SQL string literal (standard_conforming_strings: only quotes double).
pg_literal() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/''/g")"; }

pg_in_recovery() { pgsql 'SELECT pg_is_in_recovery()'; }

pg_is_standby_dir() { [ -e "$PYPI_PG_DATA/standby.signal" ] || [ -e "$PYPI_PG_DATA/recovery.conf" ]; }

pg_peer_conninfo() {
  printf 'host=%s port=%s user=%s passfile=%s application_name=%s connect_timeout=5' \
    "$PYPI_PG_PEER" "$PYPI_PG_PORT" "$PYPI_PG_REPL_USER" "$PYPI_PG_PASSFILE" "$PYPI_NODE"
}

# Debian's layout: the data directory's parents belong to postgres (its home is /var/lib/postgresql).
pg_prepare_dirs() {
  pg_parent=$(dirname "$PYPI_PG_DATA")
  install -d -o postgres -g postgres -m 0755 "$(dirname "$pg_parent")" "$pg_parent"
  install -d -o postgres -g postgres -m 2775 "$PG_SOCKET_DIR"
  install -d -o postgres -g postgres -m 0755 /var/log/postgresql
}

# The direct (systemd-less) start. A fenced node starts only once it carries a standby marker,
# so re-applying a bundle after a failover never brings back a second primary.
# Whatever starts Postgres asks first: no cluster yet, or a fenced node that is not yet a
# standby, must stay down, so re-applying a bundle never brings back a second primary.
pg_may_start() {
  if [ ! -s "$PYPI_PG_DATA/PG_VERSION" ]; then
    log "postgresql: no cluster in $PYPI_PG_DATA yet (db-init creates it); not started"
    return 1
  fi
  if [ -e "$PYPI_AGENT_STATE/db-fenced" ] && ! pg_is_standby_dir; then
    log "postgresql: $PYPI_NODE is fenced; db-reattach starts it as a standby"
    return 1
  fi
}

pg_direct_start() {
  pg_may_start || return 0
  pg_prepare_dirs
  pg_ctl_ -w -t 60 -l "/var/log/postgresql/postgresql-$PYPI_PG_VERSION-main.log" \
    -o "-c config_file=$PYPI_PG_CONF/postgresql.conf" start >/dev/null
}

install_standby_files() {
  case $PYPI_PG_DIALECT in
    standby.signal) install -o postgres -g postgres -m 0600 /dev/null "$PYPI_PG_DATA/standby.signal" ;;
    recovery.conf) install -o postgres -g postgres -m 0600 "$PG_RECOVERY_TEMPLATE" "$PYPI_PG_DATA/recovery.conf" ;;
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

db_init_primary() {
  if [ ! -s "$PYPI_PG_DATA/PG_VERSION" ]; then
    # No superuser password: the postgres role logs in by peer auth on the socket only.
    pg initdb -D "$PYPI_PG_DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  fi
  svc_running postgresql || svc_start postgresql
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

# First bring-up of a db node, as its initial role. Idempotent: a node it already initialised
# is left as it is (after a failover its role is no longer the initial one).
cmd_db_init() {
  [ "$PYPI_ROLE" = db ] || die "db-init runs on db nodes"
  mkdir -p "$PYPI_AGENT_STATE"
  if [ -e "$PYPI_AGENT_STATE/db-initialized" ]; then
    [ -e "$PYPI_AGENT_STATE/db-fenced" ] || svc_running postgresql || svc_start postgresql
    echo "db-init: $PYPI_NODE already initialised"
    return 0
  fi
  [ -e "$PYPI_AGENT_STATE/db-fenced" ] && die "$PYPI_NODE is fenced; re-attach it with db-reattach"
  pg_prepare_dirs
  case ${PYPI_PG_INITIAL_ROLE:?} in
    primary) db_init_primary ;;
    standby) db_init_standby ;;
    *) die "PYPI_PG_INITIAL_ROLE must be primary or standby, not $PYPI_PG_INITIAL_ROLE" ;;
  esac
  : >"$PYPI_AGENT_STATE/db-initialized"
  echo "db-init: $PYPI_NODE initialised as $PYPI_PG_INITIAL_ROLE"
}

# The postmaster of the data directory is gone: no pid file, no such process, or a zombie that
# nobody has reaped yet (pg_ctl counts that as running).
pg_postmaster_gone() {
  [ -r "$PYPI_PG_DATA/postmaster.pid" ] || return 0
  pg_pid=$(head -n 1 "$PYPI_PG_DATA/postmaster.pid")
  kill -0 "$pg_pid" 2>/dev/null || return 0
  [ "$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pg_pid/status" 2>/dev/null)" = Z ]
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
  cmd_overlay "$PYPI_OVERLAY_DB" release
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
  elif pg_clean_shutdown && pg pg_rewind --target-pgdata="$PYPI_PG_DATA" --source-server="$pg_source" >&2; then
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

cmd_db_replication() {
  pgsql "SELECT application_name || ' ' || state || ' ' || sync_state FROM pg_stat_replication"
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
      printf 'fip\t%s\t%s\n' "$addr" "$(cmd_fip "$addr" status)"
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

# The package volume's layout. It is created where root is root: on the storage primary's
# local mount (NFS squashes root), or on the lab's shared directory. The register job runs as
# www-data: it reads uploads, moves them out of the group-writable upload dirs and owns packages/.
ensure_package_layout() {
  root=$1
  install -d -o root -g root -m 0755 "$root" "$root/incoming"
  install -d -o www-data -g www-data -m 0755 "$root/packages"
  install -d -o www-data -g www-data -m 0700 "$root/.staging" "$root/.health"
  for entry in $PYPI_UPLOAD_USERS; do
    user=${entry%%:*} uid=${entry#*:}
    # The chroot must be root-owned and not writable by anyone else (sshd refuses it otherwise).
    install -d -o root -g root -m 0755 "$root/incoming/$user"
    install -d -o "$uid" -g www-data -m 0775 "$root/incoming/$user/upload"
    install -d -o www-data -g www-data -m 0755 "$root/incoming/$user/rejected"
  done
  echo "package layout ready in $root"
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
    fip) [ $# -eq 2 ] || usage && cmd_fip "$1" "$2" ;;
    overlay) [ $# -eq 2 ] || usage && cmd_overlay "$1" "$2" ;;
    nfs) [ $# -eq 1 ] || usage && cmd_nfs "$1" ;;
    db-init) cmd_db_init ;;
    db-fence) cmd_db_fence ;;
    db-promote) cmd_db_promote ;;
    db-reattach) cmd_db_reattach ;;
    db-sync) [ $# -eq 1 ] || usage && cmd_db_sync "$1" ;;
    upload-backend) [ $# -eq 2 ] || usage && cmd_upload_backend "$1" "$2" ;;
    upload-backends) cmd_upload_backends ;;
    db-replication) cmd_db_replication ;;
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

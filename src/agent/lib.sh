# pypi-node library: logging, node config, IMDSv2 and the AWS CLI, service control, secrets,
# overlay addresses and the Postgres basics that service control needs. Sourced by pypi-node,
# pypi-db and the Heartbeat resource scripts; never run on its own.
# shellcheck shell=sh

PYPI_NODE_CONFIG=${PYPI_NODE_CONFIG:-/etc/pypi-node/node.env}

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

# ---------------------------------------------------------------- Postgres

# Variables of these functions carry a pg_ prefix: POSIX sh has no locals.
PG_SOCKET_DIR=/var/run/postgresql

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

lab_addr_held() { ip -o addr show dev "$PYPI_IFACE" | grep -q " $1/"; }

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

# pypi-node library: logging, node config, IMDSv2 and the AWS CLI, service control, secrets,
# the lab's stand-in for EC2 associations and the Postgres basics that service control needs.
# Sourced by every agent tool and Heartbeat resource script; never run on its own.
# shellcheck shell=sh

# The one path node.env cannot name: where node.env is (paths.agentConfig; tests/agent/paths.test.ts).
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

# Heartbeat waits for its resource scripts, so every call here is bounded: short timeouts, a few
# tries, then a non-zero return with a message. They return rather than die: a die inside $(...)
# only ends that subshell, so callers resolve a value in a statement of its own and test it
# (`eni=$(own_eni) || die ...`).

IMDS_URL=http://169.254.169.254/latest
IMDS_TRIES=3

imds_curl() { curl -sf --connect-timeout 1 --max-time 2 "$@"; }

# One metadata value, never empty. At most 3 tries of 2 requests: ~1 s when IMDS refuses,
# ~4 s when it is unreachable, 13 s at worst when it accepts but hangs.
imds() {
  im_try=1
  while :; do
    if im_token=$(imds_curl -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "$IMDS_URL/api/token") &&
      [ -n "$im_token" ] &&
      im_value=$(imds_curl -H "X-aws-ec2-metadata-token: $im_token" "$IMDS_URL/meta-data/$1") &&
      [ -n "$im_value" ]; then
      printf '%s\n' "$im_value"
      return 0
    fi
    if [ "$im_try" -ge "$IMDS_TRIES" ]; then
      log "error: IMDS gave no value for $1 after $IMDS_TRIES tries"
      return 1
    fi
    im_try=$((im_try + 1))
    sleep 0.5
  done
}

# This node's primary network interface (eni-...).
own_eni() {
  oe_mac=$(imds mac) || return 1
  oe_eni=$(imds "network/interfaces/macs/$oe_mac/interface-id") || return 1
  case $oe_eni in
    eni-*) printf '%s\n' "$oe_eni" ;;
    *)
      log "error: IMDS gave '$oe_eni' as this node's interface id"
      return 1
      ;;
  esac
}

# The CLI's default timeouts are 60 s each; a failover cannot wait that long. A call that makes
# the far end work longer (the route broker) raises the read timeout around itself.
AWSC_READ_TIMEOUT=5
awsc() { aws --region "$PYPI_REGION" --output text --cli-connect-timeout 2 --cli-read-timeout "$AWSC_READ_TIMEOUT" "$@"; }

# `aws_try N CALL...`: up to N tries, 1, 1, 2, 2 s apart. The CLI's own retries are off, so a
# try is one request: the CLI's start-up plus at most 2 s to connect and 5 s to read.
aws_try() {
  at_max=$1 at_try=1
  shift
  while :; do
    if (export AWS_RETRY_MODE=standard AWS_MAX_ATTEMPTS=1 && awsc "$@"); then return 0; fi
    if [ "$at_try" -ge "$at_max" ]; then
      log "error: aws $1 $2 failed $at_max times"
      return 1
    fi
    sleep $(((at_try + 1) / 2))
    at_try=$((at_try + 1))
  done
}

# `aws_expect N WANT CALL...`: repeat a read (one try each, 1 s apart, at most N) until its text
# output, blanks squeezed to single spaces, is WANT; EC2 reads may trail a write they follow.
# Prints the last answer, so a caller can name what it found instead.
aws_expect() {
  ae_max=$1 ae_want=$2 ae_try=1
  shift 2
  while :; do
    ae_got=
    if ae_raw=$(aws_try 1 "$@"); then
      ae_got=$(printf '%s' "$ae_raw" | tr -s '\t\n ' '   ')
      if [ "$ae_got" = "$ae_want" ]; then
        printf '%s\n' "$ae_got"
        return 0
      fi
    fi
    if [ "$ae_try" -ge "$ae_max" ]; then
      printf '%s\n' "${ae_got:-no answer}"
      return 1
    fi
    ae_try=$((ae_try + 1))
    sleep 1
  done
}

# ---------------------------------------------------------------- service control

svc_running() {
  # shellcheck disable=SC2046
  case $PYPI_SERVICE_MANAGER in
    systemd) systemctl is-active --quiet $(systemd_units "$1") ;;
    direct) direct_running "$1" ;;
  esac
}

svc_reload() {
  if [ "$1" = postgresql ]; then
    pg_reload_settings
    return
  fi
  # shellcheck disable=SC2046
  case $PYPI_SERVICE_MANAGER in
    systemd)
      if svc_limits_stale "$1"; then
        svc_restart "$1"
      else
        systemctl daemon-reload && systemctl reload-or-restart $(systemd_units "$1")
      fi
      ;;
    direct)
      if svc_limits_stale "$1"; then
        svc_restart "$1"
      else
        direct_reload "$1"
      fi
      ;;
  esac
}

# A reload keeps the main process, and so the resource limits it was started with: true when the
# running main process's limits differ from its unit's Limit*= (a restart applies them). For
# ssh (Debian's unit has KillMode=process) a restart ends no session.
svc_limits_stale() {
  ls_unit=$(systemd_units "$1")
  case $ls_unit in *" "* | *.path | *.timer) return 1 ;; esac
  case $PYPI_SERVICE_MANAGER in
    systemd) ls_pid=$(systemctl show -P MainPID "$ls_unit" 2>/dev/null) || return 1 ;;
    direct) ls_pid=$(svc_main_pid "$1") || return 1 ;;
  esac
  proc_alive "${ls_pid:-}" || return 1
  unit_limits "$(unit_name "$ls_unit")" | {
    while read -r ls_res ls_soft ls_hard; do
      ls_have=$(prlimit --pid "$ls_pid" "--$ls_res" -o SOFT,HARD --noheadings --raw 2>/dev/null) || continue
      if [ "$ls_have" != "$ls_soft $ls_hard" ]; then
        log "$1: pid $ls_pid runs with $ls_res $ls_have, its unit says $ls_soft $ls_hard; restarting it"
        exit 0
      fi
    done
    exit 1
  }
}

# A unit name with systemd's default suffix.
unit_name() { case $1 in *.*) echo "$1" ;; *) echo "$1.service" ;; esac; }

# UNIT's file and its drop-ins, in the order systemd reads them (as lab/node/pypi-supervise.sh
# does): the first main file found, then every `UNIT.d/*.conf` by name, /etc's masking the rest.
unit_files() {
  uf_main=""
  for uf_dir in "${PYPI_UNIT_DIR:?}" /run/systemd/system /lib/systemd/system; do
    if [ -f "$uf_dir/$1" ]; then
      uf_main=$uf_dir/$1
      break
    fi
  done
  [ -n "$uf_main" ] || return 1
  printf '%s\n' "$uf_main"
  for uf_dir in "$PYPI_UNIT_DIR" /run/systemd/system /lib/systemd/system; do
    for uf_file in "$uf_dir/$1.d"/*.conf; do
      if [ -f "$uf_file" ]; then printf '%s %s\n' "${uf_file##*/}" "$uf_file"; fi
    done
  done | awk '!seen[$1]++' | sort -k1,1 | cut -d ' ' -f 2-
}

# `unit_values UNIT SECTION KEY`: KEY's effective values, one a line (an empty assignment
# clears the ones before it; for a single-valued key the last line counts).
unit_values() {
  uv_files=$(unit_files "$1") || return 0
  # shellcheck disable=SC2086
  awk -v sec="[$2]" -v key="$3" '
    function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); return s }
    FNR == 1 { cur = "" }
    /^[ \t]*([#;]|$)/ { next }
    /^[ \t]*\[/ { cur = trim($0); next }
    cur != sec { next }
    {
      i = index($0, "="); if (!i || trim(substr($0, 1, i - 1)) != key) next
      v = trim(substr($0, i + 1))
      if (v == "") n = 0; else val[++n] = v
    }
    END { for (j = 1; j <= n; j++) print val[j] }' $uv_files
}

# UNIT's Limit*= settings as `RESOURCE SOFT HARD` lines, RESOURCE as prlimit names it
# (LimitFSIZE: fsize) and infinity as `unlimited`. Values are counts or bytes (K, M, G, T: 1024).
unit_limits() {
  ul_files=$(unit_files "$1") || return 0
  # shellcheck disable=SC2086
  awk '
    function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); return s }
    function value(v,  m, f) {
      if (v == "infinity") return "unlimited"
      if (!match(v, /^[0-9]+[KMGT]?$/)) return ""
      m = index("KMGT", substr(v, length(v))); f = 1
      if (m) { v = substr(v, 1, length(v) - 1); while (m-- > 0) f *= 1024 }
      return sprintf("%.0f", v * f)
    }
    FNR == 1 { cur = "" }
    /^[ \t]*([#;]|$)/ { next }
    /^[ \t]*\[/ { cur = trim($0); next }
    cur != "[Service]" { next }
    {
      i = index($0, "="); k = trim(substr($0, 1, i - 1))
      if (!i || k !~ /^Limit[A-Z]+$/) next
      if (!(k in v)) keys[++nk] = k
      v[k] = trim(substr($0, i + 1))
    }
    END {
      for (j = 1; j <= nk; j++) {
        k = keys[j]; if (v[k] == "") continue
        c = index(v[k], ":")
        soft = value(c ? substr(v[k], 1, c - 1) : v[k]); hard = value(c ? substr(v[k], c + 1) : v[k])
        if (soft == "" || hard == "") { printf "pypi-node: %s=%s is not understood; not applied\n", k, v[k] > "/dev/stderr"; continue }
        print tolower(substr(k, 6)), soft, hard
      }
    }' $ul_files
}

# Unit names under systemd for services that are not a single .service.
systemd_units() {
  case $1 in
    pypi-index-register) echo "pypi-index-register.path pypi-index-register.timer" ;;
    pypi-file-copy) echo "pypi-file-copy.path pypi-file-copy.timer" ;;
    pypi-cdn-purge) echo "pypi-cdn-purge.path pypi-cdn-purge.timer" ;;
    pypi-backup-full | pypi-backup-diff | pypi-restore-test | pypi-health) echo "$1.timer" ;;
    # The cluster's own unit: Debian's umbrella postgresql.service starts only `auto` clusters.
    postgresql) echo "postgresql@${PYPI_PG_VERSION:?}-main" ;;
    *) echo "$1" ;;
  esac
}

svc_start() {
  if [ "$1" = postgresql ] && ! pg_may_start; then return 0; fi
  # shellcheck disable=SC2046
  case $PYPI_SERVICE_MANAGER in
    # Postgres is started, never enabled: only the agent starts it, after its fence checks.
    systemd) if [ "$1" = postgresql ]; then
      systemctl start $(systemd_units "$1")
    else
      systemctl enable --now $(systemd_units "$1")
    fi ;;
    direct)
      [ "$1" = postgresql ] || direct_enable "$1"
      direct_start "$1"
      ;;
  esac
}

# A full restart: what a reload cannot apply (resource limits, a new Apache module set).
svc_restart() {
  # shellcheck disable=SC2046
  case $PYPI_SERVICE_MANAGER in
    systemd) systemctl daemon-reload && systemctl restart $(systemd_units "$1") ;;
    direct) if direct_running "$1"; then svc_stop "$1" && direct_start "$1"; else direct_start "$1"; fi ;;
  esac
}

# Started at every boot (the start above enables too).
svc_enable() {
  # shellcheck disable=SC2046
  case $PYPI_SERVICE_MANAGER in
    systemd) [ "$1" = postgresql ] || systemctl enable --quiet $(systemd_units "$1") ;;
    direct) [ "$1" = postgresql ] || direct_enable "$1" ;;
  esac
}

# Not started at boot. A unit whose file is gone is already disabled.
svc_disable() {
  # shellcheck disable=SC2046
  case $PYPI_SERVICE_MANAGER in
    systemd) systemctl disable --quiet $(systemd_units "$1") 2>/dev/null || true ;;
    direct) rm -f "$SVC_ENABLED_DIR/$1" ;;
  esac
}

# A stop may return before the main process is gone (Apache's graceful-stop does): wait for it,
# so a start that follows finds the ports free.
svc_stop() {
  ss_pid=$(svc_main_pid "$1") || ss_pid=""
  # shellcheck disable=SC2046
  case $PYPI_SERVICE_MANAGER in
    systemd) systemctl stop $(systemd_units "$1") ;;
    direct) direct_stop "$1" ;;
  esac
  svc_wait_gone "$1" "$ss_pid" || return
  # What the lab's init recorded about it: a stopped service is not the supervisor's concern.
  if [ -n "$ss_pid" ]; then rm -f "$SVC_RUN_DIR/watch/$ss_pid" "$SVC_RUN_DIR/exit/$ss_pid"; fi
}

# Where each daemon writes its main pid, with systemd and without. Only nginx's is rendered
# (nginx.conf); the others are Debian's units' and the daemons' own defaults.
svc_pidfile() {
  case $1 in
    nginx) echo "${PYPI_NGINX_PID:?}" ;;
    haproxy) echo /run/haproxy.pid ;;
    apache2) echo /run/apache2/apache2.pid ;;
    ssh) echo /run/sshd.pid ;;
    heartbeat) echo /run/heartbeat.pid ;;
    postgresql) echo "$PYPI_PG_DATA/postmaster.pid" ;;
    # Type=simple: no pidfile under systemd; the direct start writes these.
    pypi-upload-watch) echo /run/pypi-upload-watch.pid ;;
    pypi-index) echo /run/pypi-index.pid ;;
    *) return 1 ;;
  esac
}

svc_main_pid() {
  mp_file=$(svc_pidfile "$1") || return 1
  mp_pid=$(pidfile_pid "$mp_file") && proc_alive "$mp_pid" && echo "$mp_pid"
}

# `svc_wait_gone NAME PID`: wait, bounded like systemd's TimeoutStopSec, for a stopped service's
# main process to exit; without systemd, then SIGKILL it, as systemd's final kill would.
svc_wait_gone() {
  [ -n "$2" ] || return 0
  wg_timeout=${PYPI_STOP_TIMEOUT:-30}
  wg_left=$((wg_timeout * 10))
  wg_killed=no
  while proc_alive "$2"; do
    if [ "$wg_left" -le 0 ]; then
      if [ "$PYPI_SERVICE_MANAGER" != direct ] || [ "$wg_killed" = yes ]; then
        log "error: $1: pid $2 still runs after stop"
        return 1
      fi
      log "$1: pid $2 still runs $wg_timeout s after stop; killing it"
      kill -KILL "$2" 2>/dev/null || true
      wg_killed=yes
      wg_left=20
    fi
    sleep 0.1
    wg_left=$((wg_left - 1))
  done
}

# The pid a pidfile names (Heartbeat pads it with blanks).
pidfile_pid() {
  [ -r "$1" ] || return 1
  pp_pid=$(head -n 1 "$1" 2>/dev/null | tr -d ' \t') || return 1
  [ -n "$pp_pid" ] && echo "$pp_pid"
}

# A zombie counts as gone: its parent reaps it a moment later.
proc_alive() {
  case ${1:-} in '' | *[!0-9]*) return 1 ;; esac
  kill -0 "$1" 2>/dev/null || return 1
  read -r pa_stat 2>/dev/null <"/proc/$1/stat" || return 1
  pa_state=${pa_stat##*) }
  [ "${pa_state%% *}" != Z ]
}

pid_alive() {
  pa_pid=$(pidfile_pid "$1") && proc_alive "$pa_pid"
}

pg() {
  tool=$1
  shift
  runuser -u postgres -- "$PYPI_PG_BIN/$tool" "$@"
}
pgsql() { runuser -u postgres -- psql -X -q -At -p "$PYPI_PG_PORT" -h "$PYPI_PG_SOCKET_DIR" -d postgres -c "$1"; }
pg_ctl_() { runuser -u postgres -- "$PYPI_PG_BIN/pg_ctl" -D "$PYPI_PG_DATA" "$@"; }

# Without systemd (the lab), daemons are started and signalled directly. The lab node's
# supervisor (lab/node/pypi-supervise.sh) stands in for the rest of systemd: it starts the
# enabled services at boot, restarts an active one as its unit's Restart= says, and runs the
# oneshots that .path and .timer units trigger.
SVC_ENABLED_DIR=/var/lib/pypi-supervise/enabled
SVC_RUN_DIR=/run/pypi-supervise

direct_running() {
  if direct_triggered "$1"; then
    [ -e "$SVC_RUN_DIR/active/$1" ] && pid_alive "$SVC_RUN_DIR/pid"
    return
  fi
  case $1 in
    postgresql) pg_ctl_ status >/dev/null 2>&1 ;;
    *) dr_file=$(svc_pidfile "$1") && pid_alive "$dr_file" ;;
  esac
}

# A service made only of .path and .timer units: the supervisor runs what they trigger.
direct_triggered() {
  case " $(systemd_units "$1") " in *.path\ * | *.timer\ *) return 0 ;; esac
  return 1
}

# systemctl enable: started at every boot.
direct_enable() {
  if direct_skipped "$1"; then return 0; fi
  mkdir -p "$SVC_ENABLED_DIR" && : >"$SVC_ENABLED_DIR/$1"
}

# systemctl start: wanted up, so restarted per Restart=. The marker holds a stamp, new at every
# start and reload (the supervisor then reads the service's units again and drops a restart it
# had planned), and the main pid, which the node's init watches: Restart= needs to know whether
# it exited or was killed.
direct_mark_active() {
  mkdir -p "$SVC_RUN_DIR/active"
  ma_pid=$(svc_main_pid "$1") || ma_pid=""
  if [ -n "$ma_pid" ] && [ -d "$SVC_RUN_DIR/watch" ]; then : >"$SVC_RUN_DIR/watch/$ma_pid"; fi
  printf '%s %s\n' "$(date +%s.%N)" "$ma_pid" >"$SVC_RUN_DIR/active/$1"
}

# A lab that cannot run a service (the storage pair's Heartbeat without DRBD) lists it here.
direct_skipped() { case " ${PYPI_DIRECT_SKIP:-} " in *" $1 "*) return 0 ;; esac; return 1; }

direct_start() {
  if direct_skipped "$1"; then
    log "$1 is not run on this node (PYPI_DIRECT_SKIP); skipped"
    return 0
  fi
  if direct_triggered "$1"; then
    direct_mark_active "$1"
    pid_alive "$SVC_RUN_DIR/pid" || log "$1: no supervisor runs here; its path and timer units are not watched"
    return 0
  fi
  case $1 in
    nginx) nginx ;;
    # Master-worker, as Debian's unit runs it (-Ws): USR2 reloads, and the workers end with it.
    haproxy) mkdir -p "$(dirname "$PYPI_HAPROXY_SOCKET")" &&
      haproxy -W -D -p "$(svc_pidfile haproxy)" -f "$PYPI_HAPROXY_CONF" ;;
    apache2) mkdir -p /run/apache2 /var/log/apache2 && apache2ctl start ;;
    # Under its unit's Limit*= (the upload size limit), as systemd starts it.
    ssh) mkdir -p /run/sshd && direct_limited ssh /usr/sbin/sshd ;;
    heartbeat) /usr/libexec/heartbeat/heartbeat ;;
    postgresql) pg_direct_start ;;
    pypi-upload-watch | pypi-index) direct_simple "$1" ;;
    *)
      log "no direct start for $1; skipped"
      return 0
      ;;
  esac || return
  # pg_direct_start leaves a fenced or uninitialised cluster down.
  if [ "$1" = postgresql ] && ! direct_running postgresql; then return 0; fi
  # Started once the pidfile names it, as systemd waits for a forking unit's PIDFile=.
  ds_left=$((${PYPI_START_TIMEOUT:-10} * 10))
  until svc_main_pid "$1" >/dev/null; do
    if [ "$ds_left" -le 0 ]; then
      log "error: $1 started, but $(svc_pidfile "$1") names no running process"
      return 1
    fi
    sleep 0.1
    ds_left=$((ds_left - 1))
  done
  direct_mark_active "$1"
}

# `direct_limited SVC CMD...`: CMD under the Limit*= of SVC's unit.
direct_limited() {
  dl_args=$(unit_limits "$(unit_name "$(systemd_units "$1")")" |
    while read -r dl_res dl_soft dl_hard; do printf ' --%s=%s:%s' "$dl_res" "$dl_soft" "$dl_hard"; done)
  shift
  if [ -z "$dl_args" ]; then
    "$@"
    return
  fi
  # shellcheck disable=SC2086
  prlimit $dl_args -- "$@"
}

# A Type=simple service from its unit, as systemd starts it: its ExecStart= in a clean
# environment (but the agent's PATH) plus Environment= and EnvironmentFile=, under its Limit*=,
# as its User= and Group=, with a fresh RuntimeDirectory=, in a session of its own, from /. Its
# pid goes where svc_pidfile says, its output (the journal's part) to /var/log/SVC.log. Like the
# lab's other daemons it runs without the unit's sandbox settings.
direct_simple() {
  dsm_unit=$(unit_name "$(systemd_units "$1")")
  dsm_exec=$(unit_values "$dsm_unit" Service ExecStart | tail -n 1)
  [ -n "$dsm_exec" ] || {
    log "error: $dsm_unit: no ExecStart= (is the unit installed?)"
    return 1
  }
  dsm_pidfile=$(svc_pidfile "$1") || return
  dsm_limits=$(unit_limits "$dsm_unit" |
    while read -r dsm_res dsm_soft dsm_hard; do printf ' --%s=%s:%s' "$dsm_res" "$dsm_soft" "$dsm_hard"; done)
  dsm_user=$(unit_values "$dsm_unit" Service User | tail -n 1)
  dsm_group=$(unit_values "$dsm_unit" Service Group | tail -n 1)
  dsm_mode=$(unit_values "$dsm_unit" Service RuntimeDirectoryMode | tail -n 1)
  for dsm_dir in $(unit_values "$dsm_unit" Service RuntimeDirectory); do
    dsm_dir=$SYSTEMD_RUNTIME_ROOT/$dsm_dir
    rm -rf "$dsm_dir"
    install -d -m "${dsm_mode:-0755}" -o "${dsm_user:-root}" -g "${dsm_group:-${dsm_user:-root}}" "$dsm_dir" || return
  done
  rm -f "$dsm_pidfile"
  setsid env -i PATH="$PATH" LANG=C.UTF-8 \
    sh -c "$DIRECT_SIMPLE_RUNNER" direct-simple "$dsm_pidfile" "$dsm_exec" "$dsm_limits" \
    "$(unit_values "$dsm_unit" Service Environment)" "$(unit_values "$dsm_unit" Service EnvironmentFile)" \
    "$dsm_user" "$dsm_group" </dev/null >>"/var/log/$1.log" 2>&1 &
}

# Where systemd makes a unit's RuntimeDirectory=.
SYSTEMD_RUNTIME_ROOT=/run

# direct_simple's child. Values are unquoted as sh would, and an EnvironmentFile is read as sh
# reads it, as the supervisor runs oneshots: what systemd's quoting in our units means.
# Arguments: the pidfile, ExecStart=, prlimit options, Environment= and EnvironmentFile= lines,
# User= and Group= (empty: root).
# shellcheck disable=SC2016
DIRECT_SIMPLE_RUNNER='
pidfile=$1 exec_line=$2 limits=$3 assignments=$4 env_files=$5 user=$6 group=$7
cd /
set -a
while IFS= read -r line; do
  [ -n "$line" ] || continue
  eval "set -- $line"
  for kv; do export "$kv"; done
done <<EOF
$assignments
EOF
while IFS= read -r f; do
  [ -n "$f" ] || continue
  optional=${f%"${f#-}"}
  f=${f#-}
  if [ -r "$f" ]; then
    . "$f"
  elif [ -z "$optional" ]; then
    echo "EnvironmentFile $f not readable" >&2
    exit 1
  fi
done <<EOF
$env_files
EOF
set +a
unset line kv f optional
# systemd escapes: $$ is a dollar, %% a percent; a leading - only ignores the exit status.
exec_line=$(printf "%s\n" "$exec_line" | sed -e "s/[\$][\$]/\\\\\$/g" -e "s/%%/%/g" -e "s/^-//")
eval "set -- $exec_line"
echo $$ >"$pidfile"
if [ -n "$user" ]; then
  set -- setpriv --reuid="$user" --regid="${group:-$user}" --init-groups -- "$@"
  HOME=/ USER=$user LOGNAME=$user
  export HOME USER LOGNAME
fi
if [ -n "$limits" ]; then exec prlimit $limits -- "$@"; fi
exec "$@"
'

direct_reload() {
  direct_running "$1" || {
    direct_start "$1"
    return
  }
  direct_mark_active "$1"
  if direct_triggered "$1"; then return 0; fi
  case $1 in
    nginx) nginx -s reload ;;
    haproxy) kill -USR2 "$(cat "$(svc_pidfile haproxy)")" ;;
    apache2) apache2ctl graceful ;;
    ssh) kill -HUP "$(cat "$(svc_pidfile ssh)")" ;;
    heartbeat) kill -HUP "$(cat "$(svc_pidfile heartbeat)")" ;;
    postgresql) pg_ctl_ reload >/dev/null ;;
    # No ExecReload=: systemd's reload-or-restart restarts it.
    pypi-upload-watch) svc_stop "$1" && direct_start "$1" ;;
    # ExecReload= sends HUP: the app server replaces its workers one at a time.
    pypi-index) kill -HUP "$(svc_main_pid "$1")" ;;
    *) log "no direct reload for $1; skipped" ;;
  esac
}

direct_stop() {
  # First, so the supervisor does not restart what is being stopped.
  rm -f "$SVC_RUN_DIR/active/$1"
  if direct_triggered "$1"; then return 0; fi
  case $1 in
    nginx) nginx -s quit ;;
    haproxy) kill "$(cat "$(svc_pidfile haproxy)")" ;;
    # As systemd stops Debian's unit: ExecStop's graceful-stop returns at once and KillMode=mixed
    # then sends the parent TERM, which ends requests in flight (nginx retries GETs elsewhere).
    apache2)
      ds_pid=$(svc_main_pid apache2) || ds_pid=""
      apache2ctl graceful-stop
      if [ -n "$ds_pid" ]; then kill -TERM "$ds_pid" 2>/dev/null || true; fi
      ;;
    ssh) kill "$(cat "$(svc_pidfile ssh)")" ;;
    heartbeat) /usr/libexec/heartbeat/heartbeat -k ;;
    postgresql) pg_ctl_ -w -m fast stop >/dev/null ;;
    pypi-upload-watch | pypi-index) if dst_pid=$(svc_main_pid "$1"); then kill "$dst_pid"; fi ;;
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

# Client tools from the server's bin dir when it has them, else Debian's newest: its clients
# talk to older servers, and pg_wrapper would pick a version from the local clusters instead.
pg_client() {
  pg_tool=$1
  shift
  if [ -x "$PYPI_PG_BIN/$pg_tool" ]; then
    pg_tool_path=$PYPI_PG_BIN/$pg_tool
  else
    pg_tool_path=$(printf '%s\n' "$PYPI_PG_LIB_DIR"/*/bin/"$pg_tool" | sort -V | tail -n 1)
    [ -x "$pg_tool_path" ] || die "no $pg_tool in $PYPI_PG_BIN or $PYPI_PG_LIB_DIR"
  fi
  runuser -u postgres -- "$pg_tool_path" "$@"
}

# SQL from stdin as the postgres superuser over the local socket; stops at the first error.
# Passwords travel this way, never on a command line.
pg_sql() {
  pg_client psql -X -q -At -v ON_ERROR_STOP=1 -h "$PYPI_PG_SOCKET_DIR" -p "$PYPI_PG_PORT" -d "${1:-postgres}"
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
  install -d -o postgres -g postgres -m 2775 "$PYPI_PG_SOCKET_DIR"
  install -d -o postgres -g postgres -m 0755 "$(dirname "$PYPI_PG_LOG")"
}

# Whatever starts Postgres asks first. It stays down without its data volume (the root disk
# may hold Debian's own cluster), without a cluster, and while fenced. A primary's cluster starts
# only from pypi-db, after it has checked the peer and the writer route (PYPI_PG_ROLE_CHECKED):
# applying a bundle or a reboot never brings back a second writable primary.
pg_may_start() {
  if [ -n "${PYPI_DATA_DEVICE:-}" ] && ! mountpoint -q "${PYPI_DATA_MOUNT:?}"; then
    log "postgresql: the data volume is not mounted on $PYPI_DATA_MOUNT (pypi-db converge mounts it); not started"
    return 1
  fi
  if [ ! -s "$PYPI_PG_DATA/PG_VERSION" ]; then
    log "postgresql: no cluster in $PYPI_PG_DATA yet (pypi-db converge creates it); not started"
    return 1
  fi
  if [ -e "$PYPI_AGENT_STATE/db-fenced" ] && ! pg_is_standby_dir; then
    log "postgresql: $PYPI_NODE is fenced; pypi-db reattach starts it as a standby"
    return 1
  fi
  if ! pg_is_standby_dir && [ "${PYPI_PG_ROLE_CHECKED:-}" != 1 ]; then
    log "postgresql: a primary's cluster starts only through pypi-db converge; not started"
    return 1
  fi
}

# A reload applies what it can. A postmaster-level change (listen_addresses, wal_log_hints, ...)
# stays pending_restart until a restart, which keeps the node's role: a restart of the running
# server, never a fresh start (a stopped cluster is pypi-db converge's to start, after its checks).
pg_reload_settings() {
  if ! svc_running postgresql; then
    log "postgresql: not running; nothing to reload (pypi-db converge starts it)"
    return 0
  fi
  pgsql 'SELECT pg_reload_conf()' >/dev/null
  # A new session sees the reloaded files once the postmaster has processed the signal.
  sleep 0.5
  pg_pending=$(pgsql "SELECT string_agg(name, ',' ORDER BY name) FROM pg_settings WHERE pending_restart")
  [ -n "$pg_pending" ] || return 0
  log "postgresql: restarting for settings that need it: $pg_pending"
  case $PYPI_SERVICE_MANAGER in
    systemd) systemctl restart "postgresql@${PYPI_PG_VERSION:?}-main" ;;
    direct) pg_ctl_ -w -t 60 -m fast restart >/dev/null ;;
  esac
}

pg_direct_start() {
  pg_may_start || return 0
  pg_prepare_dirs
  pg_ctl_ -w -t 60 -l "$PYPI_PG_LOG" \
    -o "-c config_file=$PYPI_PG_CONF/postgresql.conf" start >/dev/null
}

lab_addr_held() { ip -o addr show dev "$PYPI_IFACE" | grep -q " $1/"; }

# The lab's stand-in for EC2 associations: `<cloud>/<KIND>/<address>` names the node an EIP
# (KIND eips) or an overlay route (KIND routes) points at, in the store every lab node shares.
# lab/lib/cloud.ts takes the address off every other node.
lab_assoc_file() { printf '%s/%s/%s\n' "${PYPI_LAB_CLOUD:?}" "$1" "$2"; }

lab_assoc_set() {
  la_file=$(lab_assoc_file "$1" "$2")
  mkdir -p "$(dirname "$la_file")"
  printf '%s\n' "$PYPI_NODE" >"$la_file.$$"
  mv -f "$la_file.$$" "$la_file"
}

# mine, other, or none (never associated).
lab_assoc_holder() {
  la_file=$(lab_assoc_file "$1" "$2")
  la_holder="" la_state=""
  if [ -s "$la_file" ]; then read -r la_holder la_state <"$la_file" || true; fi
  if [ -z "$la_holder" ] || [ "$la_state" = blackhole ]; then
    echo none
  elif [ "$la_holder" = "$PYPI_NODE" ]; then
    echo mine
  else
    echo other
  fi
}

# ---------------------------------------------------------------- data volume

# Wait (bounded) until the command succeeds, polling every 2 s; WHAT names it in the log and the
# error. The command runs in a subshell, so a check that dies does not end the caller.
wait_until() {
  wu_what=$1 wu_max=$2
  shift 2
  wu_waited=0
  until ("$@") >/dev/null 2>&1; do
    [ "$wu_waited" -lt "$wu_max" ] || die "$wu_what: not within $wu_max s"
    [ $((wu_waited % 30)) -ne 0 ] || log "waiting for $wu_what ($wu_waited s)"
    wu_waited=$((wu_waited + 2))
    sleep 2
  done
}

# The node's data volume is attached after the instance starts: wait for it by its stable name,
# put ext4 on it only if it carries no signature at all, and mount it. Never formats a volume
# with data on it, so a replaced node keeps what its volume holds.
volume_mount() {
  vm_dir=$1 vm_owner=$2
  if mountpoint -q "$vm_dir"; then return 0; fi
  wait_until "data volume $PYPI_DATA_DEVICE" "${PYPI_VOLUME_WAIT_SECONDS:-300}" test -b "$PYPI_DATA_DEVICE"
  vm_type=$(blkid -p -o value -s TYPE "$PYPI_DATA_DEVICE" 2>/dev/null || true)
  if [ -z "$vm_type" ]; then
    [ -z "$(wipefs -n -O TYPE --noheadings "$PYPI_DATA_DEVICE" 2>/dev/null)" ] ||
      die "$PYPI_DATA_DEVICE carries signatures but no filesystem; not formatting it"
    log "formatting the new data volume $PYPI_DATA_DEVICE (ext4)"
    mkfs.ext4 -q -L pypi-data "$PYPI_DATA_DEVICE" >&2
  elif [ "$vm_type" != ext4 ]; then
    die "$PYPI_DATA_DEVICE carries $vm_type, not ext4; not touching it"
  fi
  mkdir -p "$vm_dir"
  mount -t ext4 -o noatime "$PYPI_DATA_DEVICE" "$vm_dir"
  chown "$vm_owner:$vm_owner" "$vm_dir"
  chmod 0755 "$vm_dir"
  log "mounted $PYPI_DATA_DEVICE on $vm_dir"
}

# The package volume's layout. It is created where root is root: on the storage primary's
# local mount (NFS squashes root), or on the lab's shared directory. The register job runs as
# www-data: it reads uploads, moves them out of the group-writable upload dirs and owns packages/.
ensure_package_layout() {
  root=$1
  install -d -o root -g root -m 0755 "$root" "$root/incoming"
  install -d -o www-data -g www-data -m 0755 "$root/packages"
  install -d -o www-data -g www-data -m 0700 "$root/.staging" "$root/.health"
  # The static index pages the app writes at each registration; Apache serves them.
  install -d -o www-data -g www-data -m 0755 "$root/simple" "$root/pypi"
  # The upload watchers' scans (written as www-data, outside every chroot), read by the registrar.
  install -d -o www-data -g www-data -m 0755 "$root/.sftp-state"
  # A registration leaves its wake-up for the file copy job here (pypi-file-copy.path).
  install -d -o www-data -g www-data -m 0755 "$root/copy-queue"
  # Page changes queue their CDN purge here (pypi-cdn-purge.path).
  install -d -o www-data -g www-data -m 0755 "$root/cdn-purge"
  for entry in $PYPI_UPLOAD_USERS; do
    user=${entry%%:*} uid=${entry#*:}
    # The chroot must be root-owned and not writable by anyone else (sshd refuses it otherwise).
    install -d -o root -g root -m 0755 "$root/incoming/$user"
    install -d -o "$uid" -g www-data -m 0775 "$root/incoming/$user/upload"
    install -d -o www-data -g www-data -m 0755 "$root/incoming/$user/rejected"
  done
  echo "package layout ready in $root"
}

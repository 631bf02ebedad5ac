#!/bin/sh
# pypi-supervise: the lab's stand-in for systemd inside one node (PYPI_SERVICE_MANAGER=direct).
# The node's init (init.pl) runs it at boot. It
#  - starts the services the agent enabled, in their units' After=/Requires= order;
#  - restarts an active service whose main process died when its unit's Restart= asks for it,
#    after RestartSec=, giving up after StartLimitBurst= starts in StartLimitIntervalSec=;
#  - runs a service's .path and .timer units (the register job) and the oneshot they trigger,
#    with its User=, Group=, EnvironmentFile= and sandbox settings.
# Every setting comes from the unit files on the node, read as systemd reads them (main file,
# then drop-ins by name). The agent's direct_* functions (lib.sh) start and stop the daemons and
# keep the markers below; this script calls them, through the agent's library, to restart.
# Limits: a daemon that dies before the agent recorded its main pid ends with an unknown status,
# taken as killed by a signal; a unit's cgroup is approximated by the daemon's session (KillMode=);
# it polls every PYPI_SUPERVISE_TICK seconds, so a .path unit fires at most once a tick where
# systemd's inotify fires at once (and would hit its trigger limit on a directory left non-empty).
# shellcheck shell=sh
set -u

LIB=${PYPI_SUPERVISE_LIB:?}
CONFIG=${PYPI_NODE_CONFIG:?}
# Shared with lib.sh (SVC_RUN_DIR, SVC_ENABLED_DIR) and the agent's apply lock.
RUN=/run/pypi-supervise
ENABLED=/var/lib/pypi-supervise/enabled
AGENT_LOCK=/run/pypi-node.lock
LOGDIR=/var/log/pypi-supervise
TICK=${PYPI_SUPERVISE_TICK:-0.2}
UNIT_DIRS="/etc/systemd/system /run/systemd/system /lib/systemd/system"
# What systemd gives a service (systemd.exec(5)).
SERVICE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
TAB=$(printf '\t')

log() { printf '%s %s\n' "$(date '+%F %T.%3N')" "$*" >>"$LOGDIR/supervise.log"; }

# Centiseconds since the kernel booted, without a fork.
now_cs() {
  read -r nc_up _ </proc/uptime
  nc_up=${nc_up%.*}${nc_up#*.}
  nc_up=${nc_up#"${nc_up%%[!0]*}"}
  NOW=${nc_up:-0}
}

# A process that exists and is not a zombie waiting for its parent.
proc_alive() {
  case ${1:-} in '' | *[!0-9]*) return 1 ;; esac
  kill -0 "$1" 2>/dev/null || return 1
  read -r pa_stat 2>/dev/null <"/proc/$1/stat" || return 1
  pa_state=${pa_stat##*) }
  [ "${pa_state%% *}" != Z ]
}

# The agent's library in a subshell: `agent FUNCTION ARGS` (its die must not end this script).
agent() {
  (
    # shellcheck source=/dev/null
    . "$LIB" && load_config "$CONFIG" >/dev/null && "$@"
  )
}

agent_ready() { [ -r "$LIB" ] && [ -r "$CONFIG" ]; }

# ---------------------------------------------------------------- unit files

# The unit's file and its drop-ins, in the order systemd reads them. An instance (name@x.service)
# without its own file uses the template's; a drop-in in /etc masks one of the same name below.
unit_files() {
  uf_unit=$1 uf_tpl="" uf_main=""
  case $uf_unit in *@?*.*) uf_tpl="${uf_unit%%@*}@.${uf_unit##*.}" ;; esac
  for uf_name in "$uf_unit" $uf_tpl; do
    for uf_dir in $UNIT_DIRS; do
      if [ -f "$uf_dir/$uf_name" ]; then
        uf_main=$uf_dir/$uf_name
        break 2
      fi
    done
  done
  [ -n "$uf_main" ] || return 1
  printf '%s\n' "$uf_main"
  for uf_name in "$uf_unit" $uf_tpl; do
    for uf_dir in $UNIT_DIRS; do
      for uf_file in "$uf_dir/$uf_name.d"/*.conf; do
        [ -f "$uf_file" ] && printf '%s\t%s\n' "${uf_file##*/}" "$uf_file"
      done
    done
  done | awk -F '\t' '!seen[$1]++' | sort -t "$TAB" -k1,1 | cut -f2
}

# The effective settings of one section of a unit, one `KEY<TAB>VALUE` per entry: an empty
# assignment clears the entries before it; a single-valued key's last entry wins.
unit_settings() {
  us_files=$(unit_files "$1") || return 0
  # shellcheck disable=SC2086
  awk -v sec="[$2]" '
    function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); return s }
    FNR == 1 { cur = "" }
    /^[ \t]*([#;]|$)/ { next }
    /^[ \t]*\[/ { cur = trim($0); next }
    cur != sec { next }
    {
      i = index($0, "="); if (!i) next
      k = trim(substr($0, 1, i - 1)); v = trim(substr($0, i + 1))
      if (!(k in n)) { keys[++nk] = k }
      if (v == "") { n[k] = 0; next }
      n[k]++; val[k, n[k]] = v
    }
    END { for (j = 1; j <= nk; j++) { k = keys[j]; for (m = 1; m <= n[k]; m++) printf "%s\t%s\n", k, val[k, m] } }
  ' $us_files
}

# `setting FILE KEY [DEFAULT]`: the last value of KEY in a unit_settings listing.
setting() {
  awk -F '\t' -v k="$2" -v d="${3:-}" '$1 == k { v = $2; f = 1 } END { print (f ? v : d) }' "$1"
}

# systemd time span (`100ms`, `5s`, `1min 30s`, `infinity`) in centiseconds (-1: infinity).
timespan_cs() {
  awk -v s="$1" 'BEGIN {
    if (s == "infinity") { print -1; exit }
    total = 0; rest = s
    while (match(rest, /[0-9.]+[ \t]*[a-z]*/)) {
      tok = substr(rest, RSTART, RLENGTH); rest = substr(rest, RSTART + RLENGTH)
      num = tok + 0; unit = tok; gsub(/[0-9. \t]/, "", unit)
      f = 100
      if (unit ~ /^(ms|msec)$/) f = 0.1
      else if (unit ~ /^(us|usec)$/) f = 0.0001
      else if (unit ~ /^(m|min|minute|minutes)$/) f = 6000
      else if (unit ~ /^(h|hr|hour|hours)$/) f = 360000
      else if (unit ~ /^(d|day|days)$/) f = 8640000
      total += num * f
    }
    printf "%d\n", total
  }'
}

with_suffix() { case $1 in *.*) echo "$1" ;; *) echo "$1.service" ;; esac; }

# ---------------------------------------------------------------- per-service knowledge

# STAMP: what the agent writes into an active marker at every start and reload (then the main
# pid). Every poll reads it, so no subshell.
marker_stamp() {
  STAMP=""
  [ -r "$RUN/active/$1" ] && read -r STAMP _ <"$RUN/active/$1"
  STAMP=${STAMP:-none}
}

# What a service is, cached under $RUN/svc/NAME until the agent starts or reloads it again:
#   kind     daemon (a main process to watch) | triggered (.path/.timer units) | oneshot (X.service)
#   pidfile  daemon: where its main pid is
#   units    its systemd unit names
#   policy   daemon: Restart= RestartSec= StartLimitBurst= StartLimitIntervalSec= KillMode=
#            TimeoutStartSec= (time spans in cs)
#   since    daemon: when this start began; main: its main pid, once seen
#   prevent, success  daemon: RestartPreventExitStatus=, SuccessExitStatus=
learn() {
  ln_svc=$1 ln_dir=$RUN/svc/$1
  mkdir -p "$ln_dir"
  marker_stamp "$ln_svc"
  ln_stamp=$STAMP
  ln_learned=""
  [ -r "$ln_dir/learned" ] && read -r ln_learned <"$ln_dir/learned"
  if [ -s "$ln_dir/kind" ] && [ "$ln_stamp" = "$ln_learned" ]; then return 0; fi
  echo "$ln_stamp" >"$ln_dir/learned"
  case $ln_svc in
    *.service)
      echo "$ln_svc" >"$ln_dir/units"
      echo oneshot >"$ln_dir/kind"
      return 0
      ;;
  esac
  agent systemd_units "$ln_svc" >"$ln_dir/units" 2>>"$LOGDIR/supervise.log" || return 1
  if agent direct_triggered "$ln_svc"; then
    learn_triggered "$ln_svc" || return 1
    echo triggered >"$ln_dir/kind"
    return 0
  fi
  agent svc_pidfile "$ln_svc" >"$ln_dir/pidfile" 2>/dev/null || : >"$ln_dir/pidfile"
  read -r ln_unit _ <"$ln_dir/units"
  ln_unit=$(with_suffix "$ln_unit")
  unit_settings "$ln_unit" Service >"$ln_dir/service"
  unit_settings "$ln_unit" Unit >"$ln_dir/unit"
  ln_interval=$(setting "$ln_dir/unit" StartLimitIntervalSec "$(setting "$ln_dir/service" StartLimitInterval 10s)")
  printf '%s %s %s %s %s %s\n' \
    "$(setting "$ln_dir/service" Restart no)" \
    "$(timespan_cs "$(setting "$ln_dir/service" RestartSec 100ms)")" \
    "$(setting "$ln_dir/unit" StartLimitBurst 5)" \
    "$(timespan_cs "$ln_interval")" \
    "$(setting "$ln_dir/service" KillMode control-group)" \
    "$(timespan_cs "$(setting "$ln_dir/service" TimeoutStartSec 90s)")" >"$ln_dir/policy"
  awk -F '\t' '$1 == "RestartPreventExitStatus" { printf "%s ", $2 }' "$ln_dir/service" >"$ln_dir/prevent"
  awk -F '\t' '$1 == "SuccessExitStatus" { printf "%s ", $2 }' "$ln_dir/service" >"$ln_dir/success"
  # A new start or reload: the main pid is the one the agent saw (init already watches it).
  now_cs
  echo "$NOW" >"$ln_dir/since"
  rm -f "$ln_dir/main" "$ln_dir/due" "$ln_dir/waited"
  ln_main=""
  [ -r "$RUN/active/$ln_svc" ] && read -r _ ln_main <"$RUN/active/$ln_svc"
  if [ -n "$ln_main" ]; then
    : >"$RUN/watch/$ln_main"
    echo "$ln_main" >"$ln_dir/main"
  fi
  echo daemon >"$ln_dir/kind"
}

# A triggered service's .path and .timer settings as `UNIT KEY VALUE` lines, and their targets.
learn_triggered() {
  lt_dir=$RUN/svc/$1
  : >"$lt_dir/path"
  : >"$lt_dir/timer"
  : >"$lt_dir/target"
  read -r lt_units <"$lt_dir/units"
  for lt_unit in $lt_units; do
    case $lt_unit in
      *.path) lt_section=Path ;;
      *.timer) lt_section=Timer ;;
      *) continue ;;
    esac
    unit_settings "$lt_unit" "$lt_section" >"$lt_dir/settings"
    printf '%s %s\n' "$lt_unit" "$(setting "$lt_dir/settings" Unit "${lt_unit%.*}.service")" >>"$lt_dir/target"
    while IFS=$TAB read -r lt_key lt_value; do
      case $lt_section:$lt_key in
        Path:DirectoryNotEmpty | Path:PathExists | Path:PathExistsGlob)
          printf '%s %s %s\n' "$lt_unit" "$lt_key" "$lt_value" >>"$lt_dir/path"
          ;;
        Timer:OnBootSec | Timer:OnStartupSec | Timer:OnActiveSec | Timer:OnUnitActiveSec | Timer:OnUnitInactiveSec)
          printf '%s %s %s\n' "$lt_unit" "$lt_key" "$(timespan_cs "$lt_value")" >>"$lt_dir/timer"
          ;;
        Path:Unit | Timer:Unit | Timer:AccuracySec | Timer:RandomizedDelaySec | Timer:Persistent | Path:MakeDirectory | Path:DirectoryMode) ;;
        *) log "$lt_unit: $lt_key= is not emulated in the lab; ignored" ;;
      esac
    done <"$lt_dir/settings"
  done
  rm -f "$lt_dir/settings"
  now_cs
  echo "$NOW" >"$lt_dir/activated"
}

# ---------------------------------------------------------------- daemons: Restart=

# `status_in HOW WORD...`: HOW (`exit N`, `signal N`) is among exit codes and signal names.
status_in() {
  si_how=$1
  shift
  case $si_how in
    exit\ *) si_code=${si_how#exit } ;;
    signal\ *) si_code=$(kill -l "${si_how#signal }" 2>/dev/null) || si_code=- ;;
    *) return 1 ;;
  esac
  for si_word; do
    case $si_word in "$si_code" | "SIG$si_code") return 0 ;; esac
  done
  return 1
}

# Whether Restart=POLICY restarts after HOW (`exit N`, `signal N` or `unknown`), per
# systemd.service(5): exit 0, SIGHUP, SIGINT, SIGTERM, SIGPIPE and SuccessExitStatus= are clean,
# and RestartPreventExitStatus= never restarts. Arguments: POLICY HOW PREVENT SUCCESS.
wants_restart() {
  # shellcheck disable=SC2086
  if status_in "$2" $3; then return 1; fi
  wr_clean=no
  case $2 in "exit 0" | "signal 1" | "signal 2" | "signal 13" | "signal 15") wr_clean=yes ;; esac
  # shellcheck disable=SC2086
  if status_in "$2" $4; then wr_clean=yes; fi
  case $1:$2 in
    always:*) return 0 ;;
    on-success:*) [ "$wr_clean" = yes ] ;;
    on-failure:*) [ "$wr_clean" = no ] ;;
    on-abnormal:exit* | on-abort:exit*) return 1 ;;
    on-abnormal:* | on-abort:*) [ "$wr_clean" = no ] ;;
    *) return 1 ;;
  esac
}

# What systemd does with the rest of a unit's processes once its main process is gone: the
# session the daemon made (its workers) stands in for the unit's cgroup.
kill_leftovers() {
  kl_sid=$1 kl_mode=$2 kl_pids=""
  case $kl_mode in control-group | mixed) ;; *) return 0 ;; esac
  for kl_stat in /proc/[0-9]*/stat; do
    read -r kl_line 2>/dev/null <"$kl_stat" || continue
    # shellcheck disable=SC2086
    set -- ${kl_line##*) }
    [ "${4:-}" = "$kl_sid" ] || continue
    kl_pid=${kl_stat#/proc/}
    kl_pids="$kl_pids ${kl_pid%/stat}"
  done
  [ -n "$kl_pids" ] || return 0
  log "KillMode=$kl_mode: killing what is left of session $kl_sid:$kl_pids"
  # shellcheck disable=SC2086
  if [ "$kl_mode" = control-group ]; then
    kill -TERM $kl_pids 2>/dev/null
    sleep 0.5
  fi
  # shellcheck disable=SC2086
  kill -KILL $kl_pids 2>/dev/null
  return 0
}

check_daemon() {
  cd_svc=$1 cd_dir=$RUN/svc/$1
  read -r cd_pidfile <"$cd_dir/pidfile" || cd_pidfile=""
  cd_pid=""
  if [ -n "$cd_pidfile" ] && [ -r "$cd_pidfile" ]; then read -r cd_pid _ <"$cd_pidfile" || cd_pid=""; fi
  cd_main=""
  [ -r "$cd_dir/main" ] && read -r cd_main <"$cd_dir/main"
  if proc_alive "$cd_pid"; then
    if [ "$cd_pid" != "$cd_main" ]; then
      : >"$RUN/watch/$cd_pid"
      echo "$cd_pid" >"$cd_dir/main"
    fi
    rm -f "$cd_dir/due" "$cd_dir/waited"
    return 0
  fi
  # The main pid is what counts once known; a daemon may drop its pidfile while it winds down.
  if proc_alive "$cd_main"; then return 0; fi
  if [ -e "$cd_dir/due" ]; then
    read -r cd_due _ <"$cd_dir/due"
    [ "$NOW" -lt "$cd_due" ] || restart "$cd_svc"
    return 0
  fi
  read -r cd_restart cd_sec _ _ cd_killmode cd_timeout <"$cd_dir/policy"
  if [ -z "$cd_main" ]; then
    # Still starting: a forking daemon writes its pidfile after its starter returned.
    read -r cd_since <"$cd_dir/since"
    if [ "$cd_timeout" -lt 0 ] || [ $((NOW - cd_since)) -lt "$cd_timeout" ]; then return 0; fi
  fi
  cd_how=unknown
  if [ -n "$cd_main" ]; then
    if [ -r "$RUN/exit/$cd_main" ]; then
      read -r cd_how <"$RUN/exit/$cd_main"
    else
      # init records the status as it reaps; give it a few polls.
      cd_waited=0
      [ -r "$cd_dir/waited" ] && read -r cd_waited <"$cd_dir/waited"
      if [ "$cd_waited" -lt 3 ]; then
        echo $((cd_waited + 1)) >"$cd_dir/waited"
        return 0
      fi
    fi
    rm -f "$RUN/watch/$cd_main" "$RUN/exit/$cd_main" "$cd_dir/main"
  fi
  rm -f "$cd_dir/waited"
  [ -z "$cd_main" ] || kill_leftovers "$cd_main" "$cd_killmode"
  if wants_restart "$cd_restart" "$cd_how" "$(cat "$cd_dir/prevent")" "$(cat "$cd_dir/success")"; then
    log "$cd_svc: main process ${cd_main:-?} ended ($cd_how); Restart=$cd_restart, restarting in $((cd_sec * 10)) ms"
    marker_stamp "$cd_svc"
    echo "$((NOW + cd_sec)) $STAMP" >"$cd_dir/due"
  else
    log "$cd_svc: main process ${cd_main:-?} ended ($cd_how); Restart=$cd_restart, left stopped"
    rm -f "$RUN/active/$cd_svc"
  fi
}

restart() {
  rs_svc=$1 rs_dir=$RUN/svc/$1
  read -r _ rs_stamp <"$rs_dir/due"
  rm -f "$rs_dir/due"
  # Stopped (marker gone) or started again by the agent since the restart was scheduled.
  marker_stamp "$rs_svc"
  if [ ! -e "$RUN/active/$rs_svc" ] || [ "$STAMP" != "$rs_stamp" ]; then
    return 0
  fi
  read -r _ _ rs_burst rs_interval _ _ <"$rs_dir/policy"
  rs_recent=""
  rs_count=0
  [ -r "$rs_dir/starts" ] && read -r rs_recent <"$rs_dir/starts"
  rs_kept=""
  for rs_at in $rs_recent; do
    if [ "$rs_interval" -lt 0 ] || [ $((NOW - rs_at)) -lt "$rs_interval" ]; then
      rs_kept="$rs_kept $rs_at"
      rs_count=$((rs_count + 1))
    fi
  done
  if [ "$rs_interval" -gt 0 ] && [ "$rs_count" -ge "$rs_burst" ]; then
    log "$rs_svc: start request repeated too quickly ($rs_count in $((rs_interval / 100)) s); left stopped"
    rm -f "$RUN/active/$rs_svc" "$rs_dir/starts"
    return 0
  fi
  echo "$rs_kept $NOW" >"$rs_dir/starts"
  if agent direct_start "$rs_svc" >>"$LOGDIR/$rs_svc.log" 2>&1; then
    log "$rs_svc: restarted"
  else
    log "$rs_svc: restart failed (see $LOGDIR/$rs_svc.log)"
  fi
}

# ---------------------------------------------------------------- oneshots: path and timer units

job_running() {
  jr_dir=$RUN/job/$1
  [ -r "$jr_dir/pid" ] || return 1
  read -r jr_pid <"$jr_dir/pid"
  proc_alive "$jr_pid"
}

# A oneshot's command in a private mount namespace with its unit's sandbox, as User=/Group=.
# Arguments: ProtectSystem= PrivateTmp= NoNewPrivileges= User= Group= WorkingDirectory=
# ReadWritePaths (one a line), then the command.
# shellcheck disable=SC2016
JOB_SANDBOX='
set -e
protect=$1 private_tmp=$2 nnp=$3 user=$4 group=$5 workdir=$6 rw=$7
shift 7
ro() { mount -o remount,bind,ro "$1" 2>/dev/null || echo "pypi-supervise: cannot make $1 read-only" >&2; }
yes() { [ "$1" = yes ] || [ "$1" = true ] || [ "$1" = on ] || [ "$1" = 1 ]; }
case $protect in
  strict)
    # Every mount read-only but the API trees (mountinfo escapes blanks as octal).
    awk "{ for (i = 7; i < NF; i++) if (\$i == \"-\") { print \$(i + 1), \$5; next } }" /proc/self/mountinfo |
      sed "s/\\\\\\([0-7][0-7][0-7]\\)/\\\\0\\1/g" |
      while read -r fstype mp; do
        mp=$(printf "%b" "$mp")
        case $fstype in nsfs | proc | sysfs) continue ;; esac
        case $mp in /dev | /dev/* | /proc | /proc/* | /sys | /sys/*) continue ;; esac
        ro "$mp"
      done
    ;;
  full) for d in /usr /boot /efi /etc; do [ -d "$d" ] && mount --bind "$d" "$d" && ro "$d"; done ;;
  yes | true) for d in /usr /boot /efi; do [ -d "$d" ] && mount --bind "$d" "$d" && ro "$d"; done ;;
esac
if yes "$private_tmp"; then
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /var/tmp
fi
printf "%s\n" "$rw" | while IFS= read -r p; do
  p=${p#-}
  [ -n "$p" ] && [ -e "$p" ] || continue
  mount --bind "$p" "$p" && mount -o remount,bind,rw "$p"
done
[ -z "$workdir" ] || cd "$workdir"
if yes "$nnp"; then set -- setpriv --no-new-privs -- "$@"; fi
if [ -n "$user" ]; then exec runuser -u "$user" -g "${group:-$user}" -- "$@"; fi
exec "$@"
'

# Runs a oneshot's ExecStart= lines in order, in the environment its unit gives it. Values are
# unquoted as sh would, which matches systemd's quoting for what our units use.
# Arguments: the job's directory (its `service` settings) and JOB_SANDBOX.
# shellcheck disable=SC2016
JOB_RUNNER='
dir=$1 sandbox=$2
words() { eval "set -- $1"; for w; do printf "%s\n" "$w"; done; }
one() { awk -F "\t" -v k="$1" -v d="$2" "\$1 == k { v = \$2; f = 1 } END { print (f ? v : d) }" "$dir/service"; }
get() { words "$(one "$1" "$2")" | head -n 1; }
all() { awk -F "\t" -v k="$1" "\$1 == k { print \$2 }" "$dir/service"; }
set -a
all Environment >"$dir/environment"
while IFS= read -r line; do
  words "$line" >"$dir/assignments"
  while IFS= read -r kv; do export "$kv"; done <"$dir/assignments"
done <"$dir/environment"
all EnvironmentFile >"$dir/envfiles"
while IFS= read -r f; do
  optional=${f%"${f#-}"}
  f=${f#-}
  if [ ! -r "$f" ]; then
    [ -n "$optional" ] && continue
    echo "EnvironmentFile $f not readable" >&2
    exit 1
  fi
  . "$f"
done <"$dir/envfiles"
set +a
rw=$(all ReadWritePaths | while IFS= read -r line; do words "$line"; done)
all ExecStart >"$dir/exec"
while IFS= read -r line; do
  # systemd escapes: $$ is a dollar, %% a percent.
  line=$(printf "%s\n" "$line" | sed -e "s/[\$][\$]/\\\\\$/g" -e "s/%%/%/g")
  eval "set -- $line"
  optional=no
  case $1 in -*) optional=yes && first=${1#-} && shift && set -- "$first" "$@" ;; esac
  rc=0
  # A mount namespace only for a unit that asks for one, as systemd does: a unit without
  # ProtectSystem=, PrivateTmp= or ReadWritePaths= mounts in the namespace of the node itself
  # (the bootstrap mounts the data volume for everything else on the node).
  ns=""
  case $(get ProtectSystem no):$(get PrivateTmp no):$rw in
    no:no: | false:false: | no:false: | false:no:) ;;
    *) ns="unshare --mount --propagation private" ;;
  esac
  $ns sh -c "$sandbox" job \
    "$(get ProtectSystem no)" "$(get PrivateTmp no)" "$(get NoNewPrivileges no)" \
    "$(get User "")" "$(get Group "")" "$(get WorkingDirectory "")" "$rw" "$@" </dev/null || rc=$?
  [ "$rc" = 0 ] || [ "$optional" = yes ] || exit "$rc"
done <"$dir/exec"
'

# Start oneshot UNIT in the background, as systemd runs it: a clean environment plus its
# Environment= and EnvironmentFile=, then every ExecStart= in order, with ProtectSystem=,
# ReadWritePaths=, PrivateTmp= and NoNewPrivileges= applied.
start_job() {
  sj_unit=$1 sj_why=$2 sj_dir=$RUN/job/$1
  mkdir -p "$sj_dir"
  unit_settings "$sj_unit" Service >"$sj_dir/service"
  if [ ! -s "$sj_dir/service" ]; then
    log "$sj_unit: no such unit; not started ($sj_why)"
    return 0
  fi
  sj_type=$(setting "$sj_dir/service" Type simple)
  case $sj_type in oneshot | simple | exec) ;; *) log "$sj_unit: Type=$sj_type is run like a oneshot in the lab" ;; esac
  log "$sj_unit: starting ($sj_why)"
  now_cs
  echo "$NOW" >"$sj_dir/active"
  rm -f "$sj_dir/status"
  env -i PATH="$SERVICE_PATH" LANG=C.UTF-8 sh -c "$JOB_RUNNER" job "$sj_dir" "$JOB_SANDBOX" \
    >>"$LOGDIR/$sj_unit.log" 2>&1 &
  echo $! >"$sj_dir/pid"
}

# Record how finished oneshots ended (they are this shell's children).
reap_jobs() {
  for rj_dir in "$RUN"/job/*; do
    [ -r "$rj_dir/pid" ] || continue
    read -r rj_pid <"$rj_dir/pid"
    proc_alive "$rj_pid" && continue
    rj_rc=0
    wait "$rj_pid" 2>/dev/null || rj_rc=$?
    now_cs
    echo "$rj_rc" >"$rj_dir/status"
    echo "$NOW" >"$rj_dir/inactive"
    rm -f "$rj_dir/pid"
    log "${rj_dir##*/}: finished (status $rj_rc)"
  done
}

path_holds() {
  case $1 in
    DirectoryNotEmpty)
      # Hidden files do not count, as in systemd.
      for ph_f in "$2"/*; do
        if [ -e "$ph_f" ] || [ -L "$ph_f" ]; then return 0; fi
      done
      return 1
      ;;
    PathExists) [ -e "$2" ] ;;
    PathExistsGlob)
      # shellcheck disable=SC2086
      for ph_f in $2; do
        if [ -e "$ph_f" ]; then return 0; fi
      done
      return 1
      ;;
  esac
}

# TARGET: the unit that SVC's path or timer unit UNIT starts (`target_of SVC UNIT`).
target_of() {
  TARGET=""
  while read -r to_unit to_target; do
    if [ "$to_unit" = "$2" ]; then TARGET=$to_target; fi
  done <"$RUN/svc/$1/target"
}

check_triggered() {
  ct_svc=$1 ct_dir=$RUN/svc/$1
  while read -r ct_unit ct_key ct_path; do
    target_of "$ct_svc" "$ct_unit"
    ct_target=$TARGET
    job_running "$ct_target" && continue
    if path_holds "$ct_key" "$ct_path"; then start_job "$ct_target" "$ct_unit: $ct_key=$ct_path"; fi
  done <"$ct_dir/path"
  read -r ct_activated <"$ct_dir/activated"
  while read -r ct_unit ct_key ct_cs; do
    target_of "$ct_svc" "$ct_unit"
    ct_target=$TARGET
    ct_jobs=$RUN/job/$ct_target
    case $ct_key in
      OnBootSec | OnStartupSec) ct_due=$((BOOT + ct_cs)) ;;
      OnActiveSec) ct_due=$((ct_activated + ct_cs)) ;;
      OnUnitActiveSec)
        [ -r "$ct_jobs/active" ] || continue
        read -r ct_at <"$ct_jobs/active"
        ct_due=$((ct_at + ct_cs))
        ;;
      OnUnitInactiveSec)
        [ -r "$ct_jobs/inactive" ] || continue
        read -r ct_at <"$ct_jobs/inactive"
        ct_due=$((ct_at + ct_cs))
        ;;
      *) continue ;;
    esac
    ct_fired=-1
    [ -r "$ct_dir/fired.$ct_unit.$ct_key" ] && read -r ct_fired <"$ct_dir/fired.$ct_unit.$ct_key"
    # An elapse is used once; one already in the past when the timer starts fires at once. One
    # that comes while the job still runs waits for it to end (systemd re-arms the timer when
    # its unit deactivates, and an OnUnitActiveSec= elapse already past fires then).
    if [ "$ct_due" -le "$NOW" ] && [ "$ct_due" -gt "$ct_fired" ] && ! job_running "$ct_target"; then
      echo "$NOW" >"$ct_dir/fired.$ct_unit.$ct_key"
      start_job "$ct_target" "$ct_unit: $ct_key"
    fi
  done <"$ct_dir/timer"
}

# ---------------------------------------------------------------- boot

# What starts at boot: the services the agent enabled, and units installed on the node itself
# and enabled with `systemctl enable` (it works without a running systemd), such as the
# bootstrap's. The host's packages enable theirs too, but a lab node sees all the host's
# packages, so only what lives in /etc/systemd/system counts.
boot_enabled() {
  for be_m in "$ENABLED"/*; do
    [ -e "$be_m" ] && echo "${be_m##*/}"
  done
  for be_link in /etc/systemd/system/multi-user.target.wants/*.service; do
    [ -L "$be_link" ] || continue
    case $(readlink "$be_link") in /etc/systemd/system/*) echo "${be_link##*/}" ;; esac
  done
}

# Enabled services in an order that honours After= and Requires= among them.
boot_order() {
  bo_left=""
  for bo_svc in $(boot_enabled); do
    learn "$bo_svc" || continue
    bo_left="$bo_left $bo_svc"
  done
  # `SVC DEP...` per service: the enabled services its units are After= or Requires=.
  for bo_svc in $bo_left; do
    bo_deps=""
    read -r bo_units <"$RUN/svc/$bo_svc/units"
    for bo_unit in $bo_units; do
      bo_unit=$(with_suffix "$bo_unit")
      unit_settings "$bo_unit" Unit >"$RUN/svc/$bo_svc/boot-unit"
      bo_wanted=$(awk -F '\t' '$1 == "After" || $1 == "Requires" { print $2 }' "$RUN/svc/$bo_svc/boot-unit")
      for bo_dep in $bo_wanted; do
        for bo_other in $bo_left; do
          [ "$bo_other" != "$bo_svc" ] || continue
          read -r bo_ounits <"$RUN/svc/$bo_other/units"
          for bo_ou in $bo_ounits; do
            [ "$(with_suffix "$bo_ou")" = "$bo_dep" ] && bo_deps="$bo_deps $bo_other"
          done
        done
      done
    done
    rm -f "$RUN/svc/$bo_svc/boot-unit"
    echo "$bo_svc$bo_deps"
  done >"$RUN/boot-deps"
  bo_done=" "
  bo_progress=yes
  while [ "$bo_progress" = yes ]; do
    bo_progress=no
    while read -r bo_svc bo_deps; do
      case $bo_done in *" $bo_svc "*) continue ;; esac
      bo_ready=yes
      for bo_dep in $bo_deps; do
        case $bo_done in *" $bo_dep "*) ;; *) bo_ready=no ;; esac
      done
      [ "$bo_ready" = yes ] || continue
      echo "$bo_svc"
      bo_done="$bo_done$bo_svc "
      bo_progress=yes
    done <"$RUN/boot-deps"
  done
  # An ordering cycle: the rest in any order, as systemd breaks cycles too.
  while read -r bo_svc _; do
    case $bo_done in *" $bo_svc "*) ;; *) echo "$bo_svc" ;; esac
  done <"$RUN/boot-deps"
}

# Runs under the agent's lock, so a bootstrap that applies meanwhile waits for boot to finish.
boot_start() {
  for bs_svc in "$@"; do
    case $bs_svc in *.service) continue ;; esac
    if agent direct_start "$bs_svc" >>"$LOGDIR/$bs_svc.log" 2>&1; then
      log "boot: $bs_svc started"
    else
      log "boot: $bs_svc failed to start (see $LOGDIR/$bs_svc.log)"
    fi
  done
}

boot() {
  agent_ready || {
    log "boot: no agent configuration yet; nothing enabled"
    return 0
  }
  bt_order=$(boot_order | tr '\n' ' ')
  log "boot: starting${bt_order:+ }${bt_order:-nothing}"
  # shellcheck disable=SC2086
  flock -o "$AGENT_LOCK" sh "$0" boot-start $bt_order
  for bt_svc in $bt_order; do
    case $bt_svc in *.service) start_job "$bt_svc" boot ;; esac
  done
}

tick() {
  now_cs
  agent_ready || return 0
  for tk_m in "$RUN"/active/*; do
    [ -e "$tk_m" ] || continue
    tk_svc=${tk_m##*/}
    learn "$tk_svc" || continue
    read -r tk_kind <"$RUN/svc/$tk_svc/kind"
    case $tk_kind in
      daemon) check_daemon "$tk_svc" ;;
      triggered) check_triggered "$tk_svc" ;;
    esac
  done
  reap_jobs
}

run() {
  mkdir -p "$RUN/active" "$RUN/svc" "$RUN/watch" "$RUN/exit" "$RUN/job" "$LOGDIR"
  echo $$ >"$RUN/pid"
  now_cs
  # Boot time for OnBootSec=; kept if this script is restarted.
  [ -s "$RUN/boot" ] || echo "$NOW" >"$RUN/boot"
  read -r BOOT <"$RUN/boot"
  if [ ! -e "$RUN/booted" ]; then
    boot
    : >"$RUN/booted"
    log "boot: done"
  else
    log "restarted; supervising what is active"
  fi
  while :; do
    tick
    sleep "$TICK"
  done
}

case ${1:-run} in
  run) run ;;
  boot-start)
    shift
    boot_start "$@"
    ;;
  *)
    echo "usage: pypi-supervise [run]" >&2
    exit 2
    ;;
esac

#!/bin/sh
# The overlay addresses (the database writer and the storage NFS address) live outside the VPC:
# a /32 route in every private route table names the holder's interface, and the holder carries
# the address itself (on lo on AWS). Heartbeat resource script of the storage pair, and the
# database tool's way to take and give up the writer address:
#   pypi-overlay ADDRESS take|release|status|holder   (start/stop are Heartbeat's names)
# holder prints mine, other or none: where the route points, whatever this node carries.
set -eu
# shellcheck source=/dev/null
. "$PYPI_LIB"

# Where the route of an overlay address points: mine, other, or none (never taken). Only the
# route counts: a rebooted node has lost the address itself but the route still names it.
overlay_holder() {
  case $PYPI_BACKEND in
    lab) lab_assoc_holder routes "$1" ;;
    aws)
      oh_eni=$(own_eni) || die "cannot learn this node's network interface from IMDS"
      oh_rtb=${PYPI_ROUTE_TABLES%% *}
      oh_route=$(aws_try 3 ec2 describe-route-tables --route-table-ids "$oh_rtb" \
        --query "RouteTables[0].Routes[?DestinationCidrBlock=='$1/32'] | [0].[NetworkInterfaceId, State]") ||
        die "cannot read route table $oh_rtb"
      read -r oh_target oh_state <<ROUTE || true
$oh_route
ROUTE
      # A blackhole route points at an interface that was deleted with its instance: nobody holds it.
      # This node's own interface exists, so its route reads blackhole only for a moment (its
      # instance was stopped and started): still mine.
      case $oh_target:$oh_state in
        :* | None:*) echo none ;;
        "$oh_eni":*) echo mine ;;
        *:blackhole) echo none ;;
        *) echo other ;;
      esac
      ;;
  esac
}

# The node's role may not replace routes: EC2 cannot scope ReplaceRoute to one destination, so
# that right would cover every route of the tables (the other overlay address, the NAT default).
# This address's broker function may, and moves only this address, only to an interface of a
# node allowed to hold it. A refusal is final; only a call that got no answer is tried again.
# The read timeout outlasts the function's own timeout (ROUTE_BROKER_TIMEOUT_SECONDS in
# src/components/route-broker.ts), so a try that got no answer has ended before the next starts:
# two moves never run at once for this node.
ROUTE_BROKER_READ_TIMEOUT=25
route_move() {
  rm_reply=$(mktemp)
  rm_stderr=$(mktemp)
  rm_try=1 rm_why=""
  # shellcheck disable=SC2034 # read by awsc (lib.sh)
  AWSC_READ_TIMEOUT=$ROUTE_BROKER_READ_TIMEOUT
  while :; do
    if rm_error=$( (export AWS_RETRY_MODE=standard AWS_MAX_ATTEMPTS=1 && awsc lambda invoke \
      --function-name "$broker" --cli-binary-format raw-in-base64-out \
      --payload "{\"networkInterfaceId\":\"$1\"}" --query FunctionError "$rm_reply") 2>"$rm_stderr"); then
      break
    fi
    rm_why=$(tr -s '\n' ' ' <"$rm_stderr" | sed 's/^ *//; s/ *$//' | cut -c1-500)
    # Another try cannot change these answers: the call is not allowed or names nothing.
    case $rm_why in
      *"(AccessDenied"* | *"(ResourceNotFoundException)"* | *"(InvalidParameterValueException)"* | *"(InvalidRequestContentException)"* | *"(UnrecognizedClientException)"*)
        rm_error=final
        break
        ;;
    esac
    rm_error=unanswered
    [ "$rm_try" -lt 3 ] || break
    sleep $(((rm_try + 1) / 2))
    rm_try=$((rm_try + 1))
  done
  # shellcheck disable=SC2034
  AWSC_READ_TIMEOUT=5
  rm_body=$(head -c 2000 "$rm_reply")
  rm -f "$rm_reply" "$rm_stderr"
  case $rm_error in
    None) log "overlay $addr: $broker routed it to $1: $rm_body" ;;
    final) die "overlay $addr: the route broker $broker cannot be called: $rm_why" ;;
    unanswered) die "overlay $addr: the route broker $broker did not answer 3 times (last: $rm_why); reading the tables shows where the route points" ;;
    *) die "overlay $addr: the route broker $broker refused ($rm_error): $rm_body" ;;
  esac
}

# Whether every private route table routes the address to interface $1 (one read each).
routes_name() {
  for rn_rtb in $PYPI_ROUTE_TABLES; do
    rn_target=$(aws_try 2 ec2 describe-route-tables --route-table-ids "$rn_rtb" \
      --query "RouteTables[0].Routes[?DestinationCidrBlock=='$addr/32'].NetworkInterfaceId | [0]") || return 1
    [ "$rn_target" = "$1" ] || return 1
  done
}

cmd_overlay() {
  addr=$1 action=$2
  # Each node may hold one overlay address: its broker moves that one whatever it is asked.
  case $action in
    start | take)
      case $PYPI_ROLE in
        db) own=$PYPI_OVERLAY_DB ;;
        *) own=$PYPI_OVERLAY_STORAGE ;;
      esac
      [ "$addr" = "$own" ] || die "overlay $addr: $PYPI_NODE may take only $own"
      ;;
  esac
  case $PYPI_BACKEND:$action in
    lab:start | lab:take)
      lab_assoc_set routes "$addr"
      lab_addr_held "$addr" || ip addr add "$addr/32" dev "$PYPI_IFACE"
      arping -q -U -c 2 -w 1 -I "$PYPI_IFACE" "$addr" || true
      ;;
    lab:stop | lab:release) if lab_addr_held "$addr"; then ip addr del "$addr/32" dev "$PYPI_IFACE"; fi ;;
    lab:status) if lab_addr_held "$addr" && [ "$(overlay_holder "$addr")" = mine ]; then echo running; else echo stopped; fi ;;
    aws:start | aws:take)
      eni=$(own_eni) || die "overlay $addr: no network interface id from IMDS; no route changed"
      [ -n "${PYPI_ROUTE_TABLES:-}" ] || die "overlay $addr: PYPI_ROUTE_TABLES is empty"
      # Set on the AWS backend only (the lab has no Lambda).
      broker=${PYPI_ROUTE_BROKER:-}
      [ -n "$broker" ] || die "overlay $addr: PYPI_ROUTE_BROKER is empty"
      ip -o addr show dev lo | grep -q " $addr/" || ip addr add "$addr/32" dev lo
      # The routes Pulumi creates name the home node: its first take (before the broker function
      # may exist) and Heartbeat's restarts find them already here and call nobody.
      if routes_name "$eni"; then
        log "overlay $addr: every route table already routes it to $eni"
        return 0
      fi
      route_move "$eni"
      # The broker checked its own work; this node reads every table back all the same.
      for rtb in $PYPI_ROUTE_TABLES; do
        target=$(aws_expect 3 "$eni" ec2 describe-route-tables --route-table-ids "$rtb" \
          --query "RouteTables[0].Routes[?DestinationCidrBlock=='$addr/32'].NetworkInterfaceId | [0]") ||
          die "overlay $addr: $rtb routes it to $target, not to this node's $eni"
      done
      ;;
    aws:stop | aws:release) if ip -o addr show dev lo | grep -q " $addr/"; then ip addr del "$addr/32" dev lo; fi ;;
    aws:status)
      # A rebooted holder has lost its loopback address while the route still names it: that is
      # not running (Heartbeat then starts the resource, which puts the address back).
      if ! ip -o addr show dev lo | grep -q " $addr/"; then
        echo stopped
        return 0
      fi
      if ! eni=$(own_eni); then
        echo unknown
        die "overlay $addr: no network interface id from IMDS"
      fi
      for rtb in $PYPI_ROUTE_TABLES; do
        if ! target=$(aws_try 2 ec2 describe-route-tables --route-table-ids "$rtb" \
          --query "RouteTables[0].Routes[?DestinationCidrBlock=='$addr/32'].NetworkInterfaceId | [0]"); then
          echo unknown
          die "overlay $addr: cannot read route table $rtb"
        fi
        [ "$target" = "$eni" ] || {
          echo stopped
          return 0
        }
      done
      echo running
      ;;
    *:holder) overlay_holder "$addr" ;;
    *) die "overlay: unknown action $action (take|release|status|holder)" ;;
  esac
}


load_config
[ $# -eq 2 ] || die "usage: pypi-overlay ADDRESS take|release|status|holder"
cmd_overlay "$1" "$2"

#!/bin/sh
# Heartbeat resource script for one floating IP: `pypi-fip ADDRESS start|stop|status`.
# On AWS it associates the EIP with a spare secondary address of this node; in the lab it
# records the association where the lab's stand-in for EC2 enforces it, and holds the address.
#
# Stop leaves the association alone. An EIP is on one interface at a time and the taker's
# --allow-reassociation moves it, so releasing first buys nothing, while it opens a window with
# no holder at all: when Heartbeat restarts on both balancers after a partition heals, every
# address would be dark until a home takes it back. nginx runs on both balancers whether or not
# they hold an address, so the last holder keeps serving until someone takes the address over.
set -eu
# shellcheck source=/dev/null
. "$PYPI_LIB"


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

# Where allocation $alloc is associated: its interface and association ids, tab-separated
# ("None" each when free).
fip_association() {
  aws_try "$1" ec2 describe-addresses --allocation-ids "$alloc" \
    --query 'Addresses[0].[NetworkInterfaceId,AssociationId]'
}

# Takes the EIP: associate (5 tries, --allow-reassociation), then read back (3 tries) that it
# points at this node's interface and spare address. Worst case, every call hanging until its
# read timeout: ~64 s plus the CLI's start-ups; API unreachable: ~16 s plus start-ups.
fip_take() {
  eni=$(own_eni) || die "fip $addr: no network interface id from IMDS; not associating"
  [ -n "$secondary" ] || die "fip $addr: this node has no spare private address for it (PYPI_FIPS)"
  ip -o addr show dev "$PYPI_IFACE" | grep -q " $secondary/" ||
    ip addr add "$secondary/${PYPI_SUBNET_PREFIX:-24}" dev "$PYPI_IFACE"
  aws_try 5 ec2 associate-address --allocation-id "$alloc" --network-interface-id "$eni" \
    --private-ip-address "$secondary" --allow-reassociation >/dev/null ||
    die "fip $addr: associate-address of $alloc failed 5 times"
  held=$(aws_expect 3 "$eni $secondary" ec2 describe-addresses --allocation-ids "$alloc" \
    --query 'Addresses[0].[NetworkInterfaceId,PrivateIpAddress]') ||
    die "fip $addr: $alloc is on '$held' after associating, not on this node's $eni $secondary"
  log "fip $addr: $alloc associated with $eni $secondary"
}

lab_eip_mine() { [ "$(lab_assoc_holder eips "$1")" = mine ]; }

cmd_fip() {
  addr=$1 action=$2
  alloc=$(fip_field "$addr" 2) || exit 1
  secondary=$(fip_field "$addr" 3) || exit 1
  case $PYPI_BACKEND:$action in
    lab:start)
      # Associate (the lab's cloud takes the address off the previous holder), then hold it.
      lab_assoc_set eips "$addr"
      lab_addr_held "$addr" || ip addr add "$addr/32" dev "$PYPI_IFACE"
      # Gratuitous ARP so peers update their caches now rather than after a timeout.
      arping -q -U -c 2 -w 1 -I "$PYPI_IFACE" "$addr" || true
      ;;
    lab:stop | aws:stop) log "fip $addr: left associated until a peer takes it over" ;;
    lab:status) if lab_addr_held "$addr" && lab_eip_mine "$addr"; then echo running; else echo stopped; fi ;;
    # After a boot: an address still associated with this node is served at once, instead of
    # after Heartbeat's initdead; Heartbeat may still hand it to the peer later.
    lab:reclaim)
      if lab_eip_mine "$addr" && ! lab_addr_held "$addr"; then
        ip addr add "$addr/32" dev "$PYPI_IFACE"
        arping -q -U -c 2 -w 1 -I "$PYPI_IFACE" "$addr" || true
        log "fip $addr: still associated with this node; serving it again"
      fi
      ;;
    aws:reclaim)
      eni=$(own_eni) || die "fip $addr: no network interface id from IMDS"
      held=$(fip_association 2) || die "fip $addr: cannot read the association of $alloc"
      if [ "${held%%[[:space:]]*}" = "$eni" ] && ! ip -o addr show dev "$PYPI_IFACE" | grep -q " $secondary/"; then
        ip addr add "$secondary/${PYPI_SUBNET_PREFIX:-24}" dev "$PYPI_IFACE"
        log "fip $addr: still associated with this node; serving it again"
      fi
      ;;
    aws:start) fip_take ;;
    aws:status)
      # Heartbeat reads anything but "running" as not held, so an unknown state never looks held.
      if ! eni=$(own_eni); then
        echo unknown
        die "fip $addr: no network interface id from IMDS"
      fi
      if ! held=$(fip_association 2); then
        echo unknown
        die "fip $addr: cannot read the association of $alloc"
      fi
      if [ "${held%%[[:space:]]*}" = "$eni" ]; then echo running; else echo stopped; fi
      ;;
    # For the health model: 1 when exactly one balancer holds the address (an association names
    # one interface; the lab's cloud enforces the same), and when that is this node, the address
    # is on it; else 0. Unlike status it counts the peer holding it as held.
    lab:held)
      case $(lab_assoc_holder eips "$addr") in
        mine) if lab_addr_held "$addr"; then echo 1; else echo 0; fi ;;
        other) echo 1 ;;
        *) echo 0 ;;
      esac
      ;;
    aws:held)
      eni=$(own_eni) || die "fip $addr: no network interface id from IMDS"
      held=$(fip_association 2) || die "fip $addr: cannot read the association of $alloc"
      case ${held%%[[:space:]]*} in
        "$eni") if ip -o addr show dev "$PYPI_IFACE" | grep -q " $secondary/"; then echo 1; else echo 0; fi ;;
        eni-*) echo 1 ;;
        *) echo 0 ;;
      esac
      ;;
    *) die "fip: unknown action $action (start|stop|status|reclaim|held)" ;;
  esac
}

load_config
[ $# -eq 2 ] || die "usage: pypi-fip ADDRESS start|stop|status|reclaim|held"
cmd_fip "$1" "$2"

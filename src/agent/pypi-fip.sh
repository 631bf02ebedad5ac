#!/bin/sh
# Heartbeat resource script for one floating IP: `pypi-fip ADDRESS start|stop|status`.
# On AWS it associates the EIP with a spare secondary address of this node; in the lab it
# holds the address on the node's interface.
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

load_config
[ $# -eq 2 ] || die "usage: pypi-fip ADDRESS start|stop|status"
cmd_fip "$1" "$2"

#!/bin/sh
# prov-egress: the environment's gate. It sits on the environment's internal
# network and on prov's outside network, and does one or both of:
# - the egress proxy (PROV_PROXY=1): squid, with the configuration prov wrote
#   for this environment (its allowlist, and any secrets it injects), mounted
#   read-only at /etc/prov-egress; squid drops to the proxy user;
# - the port relay (PROV_RELAY_TO set): a published host port, relayed to the
#   environment's sshd and nowhere else. It listens on this container's
#   outside address only; the environment reaches nothing of the gate but the
#   proxy's port (its own iptables rules), so the relay gives it no way out.
#
#   PROV_LISTEN      the proxy's address on the environment's internal network
#   PROV_PROXY       1 (default): run the proxy; 0: the relay only
#   PROV_RELAY_TO    ADDRESS:22, the environment's sshd
#   PROV_RELAY_PORT  the port the relay listens on (Docker publishes it)
#   PROV_SLOT        1: a slot made before its environment; its configuration
#                    allows nothing until prov writes the environment's and
#                    sends SIGHUP, which may turn on secret injection then
#   PROV_PRIVATE_NETS  IPv4 ranges the gate never opens a connection to
#   PROV_ALLOW_NETS  of those, the ranges the user allowed (--allow-net)
set -eu
die() {
	printf 'prov-egress: %s\n' "$*" >&2
	exit 1
}
[ -n "${PROV_LISTEN:-}" ] || die "PROV_LISTEN is not set"

# The gate's own firewall, so that a compromised squid or socat (or a name
# that resolves somewhere it should not) cannot reach another proxy, this
# host's services, the metadata address or the LAN: new connections may go
# to loopback (Docker's DNS at 127.0.0.11), DNS servers (Docker's resolver
# forwards from this namespace), the environment's sshd (the relay), and TCP
# 80/443 of public addresses and of the allowed ranges; new connections may
# come in to the proxy's port (from the environment) and the relay's (from
# the host) only. prov gives the gate
# NET_ADMIN and SETPCAP for this step only: the script then runs again
# without either in its bounding set, so nothing below can change the rules.
if [ -z "${PROV_FIREWALLED:-}" ]; then
	relay_rule="# no relay"
	if [ -n "${PROV_RELAY_TO:-}" ]; then
		relay_rule="-A OUTPUT -d ${PROV_RELAY_TO%:*}/32 -p tcp --dport ${PROV_RELAY_TO##*:} -j ACCEPT"
	fi
	allowed="" refused=""
	for net in ${PROV_ALLOW_NETS:-}; do
		case $net in *:*) continue ;; esac
		allowed="$allowed
-A OUTPUT -d $net -p tcp -m multiport --dports 80,443 -j ACCEPT"
	done
	for net in ${PROV_PRIVATE_NETS:-}; do
		refused="$refused
-A OUTPUT -d $net -p tcp -j REJECT --reject-with tcp-reset
-A OUTPUT -d $net -j REJECT"
	done
	# Inbound, what the gate serves and to whom: the proxy's port on the
	# environment's network, the relay to this engine's host (its published
	# port arrives from the outside network's gateway, by docker-proxy or NAT)
	# and nothing to anyone else, so another proxy or container on the outside
	# network, whatever its own rules, cannot open a connection to this one.
	gateway="" outside_if=""
	while read -r iface dest gw _; do
		if [ "$dest" = 00000000 ] && [ "$gw" != 00000000 ] && [ -z "$gateway" ]; then
			# little-endian hex: 0102A8C0 is 192.168.2.1
			d=${gw%??????} c=${gw#??} c=${c%????} b=${gw#????} b=${b%??} a=${gw#??????}
			gateway=$((0x$a)).$((0x$b)).$((0x$c)).$((0x$d)) outside_if=$iface
		fi
	done </proc/net/route
	[ -n "$outside_if" ] || die "no default route: cannot tell the outside network's interface"
	# The proxy's port on any address but the outside one (a slot's squid
	# moves from loopback to its environment's address at the hand-over).
	serve_rule="-A INPUT ! -i $outside_if -p tcp --dport 3128 -j ACCEPT"
	if [ -n "${PROV_RELAY_PORT:-}" ]; then
		serve_rule="$serve_rule
-A INPUT -s $gateway/32 -p tcp --dport $PROV_RELAY_PORT -j ACCEPT"
	fi
	iptables-restore <<RULES || die "cannot set up the gate's firewall (iptables-restore)"
*filter
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
$serve_rule
-A INPUT -p tcp -j REJECT --reject-with tcp-reset
-A INPUT -j DROP
-A OUTPUT -o lo -j ACCEPT
-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A OUTPUT -p udp --dport 53 -j ACCEPT
-A OUTPUT -p tcp --dport 53 -j ACCEPT
$relay_rule$allowed$refused
-A OUTPUT -p tcp -m multiport --dports 80,443 -j ACCEPT
-A OUTPUT -p tcp -j REJECT --reject-with tcp-reset
-A OUTPUT -j REJECT
COMMIT
RULES
	export PROV_FIREWALLED=1
	bounding=$(awk '/^CapBnd:/ { print $2 }' /proc/self/status)
	if [ $((0x$bounding & 0x100)) -ne 0 ]; then
		exec setpriv --bounding-set -net_admin,-setpcap -- /bin/sh "$0" "$@"
	fi
fi
CONF=/etc/prov-egress/squid.conf

relay() {
	# The outside address: the one of this container's addresses that is not
	# on the environment's network.
	outside=""
	for addr in $(hostname -I); do
		if [ "$addr" != "$PROV_LISTEN" ] && [ -z "$outside" ]; then outside=$addr; fi
	done
	[ -n "$outside" ] || die "no outside address to relay SSH on (only $PROV_LISTEN)"
	printf 'prov-egress: relaying %s:%s to %s\n' "$outside" "$PROV_RELAY_PORT" "$PROV_RELAY_TO"
	# su=nobody: after binding, the relay runs unprivileged; max-children
	# bounds the connections it serves at once.
	set -- socat "TCP-LISTEN:$PROV_RELAY_PORT,bind=$outside,fork,reuseaddr,su=nobody,max-children=256" \
		"TCP:$PROV_RELAY_TO"
	if [ "${PROV_PROXY:-1}" = 0 ]; then
		exec "$@"
	fi
	# Beside the proxy: started again should it ever end.
	(while :; do "$@" || :; sleep 1; done) &
}
if [ -n "${PROV_RELAY_TO:-}" ]; then
	[ -n "${PROV_RELAY_PORT:-}" ] || die "PROV_RELAY_PORT is not set"
	relay
fi
[ -s "$CONF" ] || die "$CONF is missing: run prov up again"
run=/run/prov-egress
mkdir -p "$run"
# squid, as the proxy user, logs to this container's stdout and stderr
# (Docker's log of it, capped) and keeps the certificates it makes for the
# hosts whose secrets it injects in a small database on /run (a tmpfs).
chmod a+w /proc/self/fd/1 /proc/self/fd/2
if grep -q '^sslcrtd_program' "$CONF" || [ "${PROV_SLOT:-0}" = 1 ]; then
	rm -rf "$run/ssl_db"
	/usr/lib/squid/security_file_certgen -c -s "$run/ssl_db" -M 1MB >/dev/null ||
		die "cannot make squid's certificate database"
	chown -R proxy:proxy "$run/ssl_db"
fi
printf 'prov-egress: proxy on %s:3128\n' "$PROV_LISTEN"
exec squid -N -f "$CONF"

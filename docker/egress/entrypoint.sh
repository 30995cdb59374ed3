#!/bin/sh
# prov-egress: the environment's gate. It sits on the environment's internal
# network and on prov's outside network, and does one or both of:
# - the egress proxy (PROV_PROXY=1): tinyproxy, configured from the
#   environment prov set at create time, in the foreground (drops to nobody);
# - the port relay (PROV_RELAY_TO set): a published host port, relayed to the
#   environment's sshd and nowhere else. It listens on this container's
#   outside address only; the environment reaches nothing of the gate but the
#   proxy's port (its own iptables rules), so the relay gives it no way out.
#
#   PROV_LISTEN      the proxy's address on the environment's internal network
#   PROV_CLIENT      the environment's address: the only client allowed
#   PROV_ALLOW       allowed domain names, space-separated; each also allows
#                    its subdomains. Empty: everything is refused.
#   PROV_PROXY       1 (default): run the proxy; 0: the relay only
#   PROV_RELAY_TO    ADDRESS:22, the environment's sshd
#   PROV_RELAY_PORT  the port the relay listens on (Docker publishes it)
set -eu
die() {
	printf 'prov-egress: %s\n' "$*" >&2
	exit 1
}
[ -n "${PROV_LISTEN:-}" ] || die "PROV_LISTEN is not set"
[ -n "${PROV_CLIENT:-}" ] || die "PROV_CLIENT is not set"

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
dir=/run/prov-egress
mkdir -p "$dir"
: >"$dir/allow"
for domain in ${PROV_ALLOW:-}; do
	case $domain in
	*[!A-Za-z0-9.-]* | .* | *..*) die "not a domain name: '$domain'" ;;
	esac
	# An extended regular expression for the name and its subdomains.
	printf '(^|\\.)%s$\n' "$(printf '%s' "$domain" | sed 's/\./\\./g')" >>"$dir/allow"
done
cat >"$dir/tinyproxy.conf" <<CONF
User nobody
Group nogroup
Port 3128
Listen $PROV_LISTEN
Allow $PROV_CLIENT
Timeout 600
MaxClients 256
# Info: refusals of a port (CONNECT to :22) are logged only at this level.
LogLevel Info
DisableViaHeader Yes
ConnectPort 443
ConnectPort 80
FilterType ere
Filter "$dir/allow"
FilterDefaultDeny Yes
FilterURLs No
FilterCaseSensitive No
CONF
printf 'prov-egress: allowing %s\n' "${PROV_ALLOW:-nothing}"
exec tinyproxy -d -c "$dir/tinyproxy.conf"

#!/bin/sh
# prov-egress: write tinyproxy's configuration from the environment prov set
# at create time, then run tinyproxy in the foreground (it drops to nobody).
#
#   PROV_LISTEN  the proxy's address on the environment's internal network
#   PROV_CLIENT  the environment's address: the only client allowed
#   PROV_ALLOW   allowed domain names, space-separated; each also allows its
#                subdomains. Empty: everything is refused.
set -eu
die() {
	printf 'prov-egress: %s\n' "$*" >&2
	exit 1
}
[ -n "${PROV_LISTEN:-}" ] || die "PROV_LISTEN is not set"
[ -n "${PROV_CLIENT:-}" ] || die "PROV_CLIENT is not set"
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

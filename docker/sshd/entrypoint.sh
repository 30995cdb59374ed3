#!/bin/sh
# prov-entrypoint: prepare the agent user and start sshd in the foreground.
#
# Runs under tini (PID 1) as root, at every container start, so every step
# must be idempotent: "docker restart" runs it again on the same filesystem.
#
# Environment (set by prov at "docker create"):
#   PROV_UID, PROV_GID  numeric user and group id for "agent" (default 1000),
#                       normally the host user's, so files in bind-mounted
#                       host directories keep the right owner.
#   PROV_PROJECT_DIR    the project's path, mounted at the same path as on
#                       the host (NTM cds there).
#   PROV_PROJECT_VOLUME 1: that path is prov's named volume (remote engines).
# Mounted read-only by prov at /etc/prov/keys (the environment's keys dir on
# the host, $PROV_HOME/envs/NAME/sshd; on a remote engine a volume holding
# the same files), installed root-owned at every start:
#   ssh_host_ed25519_key  per-environment host key -> /etc/ssh/
#   authorized_keys       the user's public key    -> /etc/ssh/authorized_keys/agent
#   egress-ca.pem         the environment's CA, if its proxy injects secrets
#                         -> the system's trust store
#   PROV_SUDO           1: the agent may use sudo (`prov up --sudo`); else
#                       no sudo rule exists (and Docker sets no-new-privileges).
#   PROV_EGRESS         allowlist / none: the container's network is an
#                       internal one; its default route is removed and
#                       iptables lets new connections go only to the egress
#                       proxy (PROV_PROXY_ADDR), not even to this machine.
#   PROV_PROXY          allowlist: the egress proxy's URL, written for logins
#                       (pam_env reads /etc/prov/proxy.env).
# prov gives the container NET_ADMIN and SETPCAP for these steps only: both
# are dropped from the bounding set before sshd starts, so no process below
# sshd (not even root with --sudo) can get them back.
# Put in by prov between create and start, only if the user passes any:
#   /etc/prov/environment  KEY=VALUE lines for sessions (pam_env reads it at
#                          each login)
#
# Nothing here may change the owner of anything inside a bind mount: host
# directories are mounted under /home/agent, so every chown is
# non-recursive, does not follow symlinks (-h), and skips mount points and
# everything below them.
set -eu

HOME_DIR=/home/agent
HOST_KEY=/etc/ssh/ssh_host_ed25519_key
AUTH_KEYS=/etc/ssh/authorized_keys/agent
KEYS=/etc/prov/keys

die() {
	printf 'prov-entrypoint: %s\n' "$*" >&2
	exit 1
}

# check_id NAME VALUE: a positive decimal id that useradd/groupadd accept.
check_id() {
	case $2 in
	'' | *[!0-9]*) die "$1 must be a positive integer, got '$2'" ;;
	0) die "$1 must not be 0 (root)" ;;
	0*) die "$1 must be written without leading zeros, got '$2'" ;;
	esac
	# 4294967295 is (uid_t)-1; at most 10 digits keeps the test in range.
	if [ "${#2}" -gt 10 ] || [ "$2" -gt 4294967294 ]; then
		die "$1 is out of range: $2"
	fi
}

# MOUNTS: every mount point of this container, one per line, with
# mountinfo's octal escapes (space, tab, newline, backslash) undone. Read once:
# nothing below mounts anything, and the checks run in the shell itself, so a
# start costs a handful of processes, not a few per path.
# With PROV_HOME_VOLUME=1 the home directory itself is prov's own named
# volume (not a host directory): it is left out, so its files can be given to
# the agent like the image's own; the host's mounts below it still count.
home_volume=""
if [ "${PROV_HOME_VOLUME:-0}" = 1 ]; then home_volume=$HOME_DIR; fi
MOUNTS=$(awk -v home="$home_volume" '{
		m = $5
		gsub(/\\040/, " ", m); gsub(/\\011/, "\t", m)
		gsub(/\\012/, "\n", m); gsub(/\\134/, "\\", m)
		if (m != home) print m
	}' /proc/self/mountinfo)

# in_mount PATH [TOP]: true if PATH is a mount point other than / or lies
# beneath one, i.e. it is the host's, not the container's own filesystem.
# With TOP, only mount points at or below TOP count.
in_mount() {
	while IFS= read -r m; do
		[ "$m" != / ] || continue
		if [ -n "${2:-}" ]; then
			case $m in
			"$2" | "$2"/*) ;;
			*) continue ;;
			esac
		fi
		case $1 in
		"$m" | "$m"/*) return 0 ;;
		esac
	done <<MOUNTS_END
$MOUNTS
MOUNTS_END
	return 1
}

# givable PATH: true if PATH exists (or is a dangling link) and may be
# chowned to agent, i.e. it does not belong to a mount.
givable() {
	if [ ! -e "$1" ] && [ ! -L "$1" ]; then
		return 1
	fi
	! in_mount "$1" "$HOME_DIR"
}

# parent_of PATH: set $parent to PATH's directory, like dirname, without a
# process ("/a" -> "/", "a" -> ".").
parent_of() {
	case $1 in
	*/*) parent=${1%/*} ;;
	*) parent=. ;;
	esac
	[ -n "$parent" ] || parent=/
}

# --- 0. the home's own file system --------------------------------------------
# PROV_HOME_BOUND=1: the home volume is a bind of a loop-mounted file system of
# a fixed size (prov's homedisk). After a reboot of the engine host that mount
# is gone until `prov up`/`prov start` makes it again, and the volume is an
# empty directory on the host's disk: refuse to run the agent on that.
if [ "${PROV_HOME_BOUND:-0}" = 1 ]; then
	home_source=$(awk -v home="$HOME_DIR" '$5 == home {
			for (i = 7; i <= NF; i++) if ($i == "-") { print $(i + 2); exit }
		}' /proc/self/mountinfo)
	case $home_source in
	/dev/loop*) ;;
	*) die "the home's own file system is not mounted (found '${home_source:-nothing}' at $HOME_DIR): run \`prov start\` or \`prov up\` for this environment, not \`docker start\`" ;;
	esac
fi

# --- 1. ids ------------------------------------------------------------------
PROV_UID=${PROV_UID:-1000}
PROV_GID=${PROV_GID:-1000}
check_id PROV_UID "$PROV_UID"
check_id PROV_GID "$PROV_GID"

# --- 2. group and user -------------------------------------------------------
# The image has agent as 1000:1000, so the usual start changes nothing here.
# The group is always called "agent". If another group already has PROV_GID
# (e.g. GID 20 from macOS is "dialout" on Debian) it gets a second name (-o).
entry=$(getent group agent) || entry=""
if [ -n "$entry" ]; then
	IFS=: read -r _ _ cur_gid _ <<ENTRY_END
$entry
ENTRY_END
	if [ "$cur_gid" != "$PROV_GID" ]; then
		groupmod -o -g "$PROV_GID" agent ||
			die "cannot change the GID of group agent to $PROV_GID"
	fi
else
	groupadd -o -g "$PROV_GID" agent ||
		die "cannot create group agent with GID $PROV_GID"
fi

entry=$(getent passwd agent) || entry=""
if [ -n "$entry" ]; then
	IFS=: read -r _ _ cur_uid cur_gid _ <<ENTRY_END
$entry
ENTRY_END
	if [ "$cur_uid" != "$PROV_UID" ] || [ "$cur_gid" != "$PROV_GID" ]; then
		# usermod -u/-g would chown the whole home directory tree (bind
		# mounts included) when it stats the home directory; with -d
		# pointing at a path that does not exist it skips that, and the
		# second call only rewrites the home field.
		usermod -o -u "$PROV_UID" -g agent -d /nonexistent/prov-agent agent ||
			die "cannot change agent to UID $PROV_UID / GID $PROV_GID"
		usermod -d "$HOME_DIR" agent ||
			die "cannot set the home directory of agent"
	fi
else
	# -M: the home directory already exists (made at image build).
	# -l: no lastlog/faillog entry (sparse multi-GB files for large UIDs).
	useradd -o -M -l -p '*' -u "$PROV_UID" -g agent -d "$HOME_DIR" -s /bin/bash agent ||
		die "cannot create user agent with UID $PROV_UID"
fi
# "*": no password can match, but unlike "!" the account is not locked, so
# sshd still allows public-key logins.
entry=$(getent shadow agent) || entry=""
IFS=: read -r _ cur_pw _ <<ENTRY_END
$entry
ENTRY_END
if [ "$cur_pw" != '*' ]; then
	usermod -p '*' agent >/dev/null || die "cannot set the password field of agent"
fi

# --- 3. ownership of the home directory ------------------------------------
# The paths are collected in "$@" and chowned (each one itself, -h: never
# through a link) by a single chown.
set --
if givable "$HOME_DIR"; then set -- "$@" "$HOME_DIR"; fi
# Files copied from /etc/skel at image build (.bashrc, .profile, ...).
while IFS= read -r skel; do
	[ -n "$skel" ] || continue
	path="$HOME_DIR/${skel#/etc/skel/}"
	if givable "$path"; then set -- "$@" "$path"; fi
done <<SKEL_END
$(find /etc/skel -mindepth 1)
SKEL_END
# Docker creates the missing parent directories of a bind-mount target
# root-owned (e.g. ~/.config for ~/.config/gemini, ~/.local and ~/.local/share
# for ~/.local/share/x): hand those to the agent. They are in the container's
# own filesystem; givable skips any that lie inside another mount.
if givable "$HOME_DIR/.config"; then set -- "$@" "$HOME_DIR/.config"; fi
while IFS= read -r mnt; do
	case $mnt in
	"$HOME_DIR"/*) ;;
	*) continue ;;
	esac
	parent_of "$mnt"
	dir=$parent
	while [ "${dir#"$HOME_DIR"/}" != "$dir" ]; do
		if [ -d "$dir" ] && [ ! -L "$dir" ] && givable "$dir"; then
			set -- "$@" "$dir"
		fi
		parent_of "$dir"
		dir=$parent
	done
done <<MOUNTS_END
$MOUNTS
MOUNTS_END
if [ $# -gt 0 ]; then
	chown -h agent:agent -- "$@" || die "cannot chown $* to agent"
fi

# --- 3a. the container's layer -------------------------------------------------
# Only the home has a size; the container's own layer has none (overlay2 on
# ext4 has no quota). prov's last image layer lists what on it others than
# root may write (/usr/share/prov/layer-owned, `UID GID MODE PATH`). What of
# that the agent's UID or GID could write, or anyone could, becomes root's and
# unwritable by others, once per container, before sshd lets anyone in.
# Mounts and everything below them are the host's (or prov's volumes) and are
# left alone: MOUNTS, and the home volume it leaves out.
LAYER_OWNED=/usr/share/prov/layer-owned
LAYER_TAKEN=/etc/prov/layer-taken
if [ -f "$LAYER_OWNED" ] && [ "$(head -n 1 "$LAYER_TAKEN" 2>/dev/null)" != "$PROV_UID:$PROV_GID" ]; then
	taken=$(printf '%s\n%s\n' "$MOUNTS" "$HOME_DIR" | awk -v uid="$PROV_UID" -v gid="$PROV_GID" '
		FNR == NR {
			if ($0 != "/" && $0 != "") mounts[++n] = $0
			next
		}
		{
			path = $0
			sub(/^[^ ]+ [^ ]+ [^ ]+ /, "", path)
			mode = sprintf("%04d", $3)
			group_w = substr(mode, length(mode) - 1, 1) ~ /[2367]/
			other_w = substr(mode, length(mode), 1) ~ /[2367]/
			if (!($1 == uid || ($2 == gid && group_w) || other_w)) next
			for (i = 1; i <= n; i++)
				if (path == mounts[i] || index(path, mounts[i] "/") == 1) next
			print path
		}' - "$LAYER_OWNED") || die "cannot read $LAYER_OWNED"
	if [ -n "$taken" ]; then
		printf '%s\n' "$taken" | xargs -d '\n' chown -h root:root -- ||
			die "cannot make the layer's paths the agent could write root's"
		printf '%s\n' "$taken" | xargs -d '\n' chmod go-w -- ||
			die "cannot make the layer's paths the agent could write unwritable"
		count=$(printf '%s\n' "$taken" | wc -l)
		first=$(printf '%s\n' "$taken" | head -n 3 | paste -s -d ' ')
		printf "prov: layer: the image let the agent write %s path(s) of the container's own layer, which no size bounds (%s%s); they are root's now\n" \
			"$count" "$first" "$([ "$count" -gt 3 ] && echo ', ...')" >&2
	fi
	{ printf '%s:%s\n' "$PROV_UID" "$PROV_GID"; printf '%s\n' "$taken"; } >"$LAYER_TAKEN.tmp" &&
		chmod 0600 "$LAYER_TAKEN.tmp" && mv "$LAYER_TAKEN.tmp" "$LAYER_TAKEN" ||
		die "cannot record what was taken from the layer in $LAYER_TAKEN"
fi

# --- 3b. the way to the project -----------------------------------------------
# The project is mounted at its host path, e.g. /root/ntm_Dev/demo. Its
# parents inside the container are the image's own directories (Docker makes
# missing ones root 0755, but the image's /root is 0700) and must let agent
# pass. Only the search bit is added, and never to a directory of the host.
set --
if [ -n "${PROV_PROJECT_DIR:-}" ]; then
	parent_of "$PROV_PROJECT_DIR"
	dir=$parent
	while [ "$dir" != / ] && [ "$dir" != . ]; do
		if [ -d "$dir" ] && [ ! -L "$dir" ] && ! in_mount "$dir"; then
			set -- "$@" "$dir"
		fi
		parent_of "$dir"
		dir=$parent
	done
fi
if [ $# -gt 0 ]; then
	chmod a+x -- "$@" || die "cannot make $* traversable for agent"
fi
# A project the agent does not own (root's, which prov made writable for it
# with an ACL): git refuses its repositories (the project's own, and any below
# it) as of "dubious ownership" unless the system config says they are safe.
# The agent is the only user in here, and every other file it could meet is
# the image's or its own, so all of them are. /etc/gitconfig is root's.
if [ -d "${PROV_PROJECT_DIR:-}" ] && [ "$(stat -c %u "$PROV_PROJECT_DIR")" != "$PROV_UID" ]; then
	git config --system --replace-all safe.directory '*' ||
		die "cannot mark the project's repositories as safe for git"
fi
# The empty placeholders prov made for protected paths that did not exist
# (.envrc, .mcp.json, .idea/): read-only here, and ignored by git, so an
# agent's `git add -A` does not commit them nor `git stash -u` try to remove
# them. (The agent's own ~/.gitconfig could name
# another excludes file; then it commits empty files, nothing worse.)
if [ -n "${PROV_GIT_EXCLUDE:-}" ]; then
	printf '%s\n' "$PROV_GIT_EXCLUDE" >/etc/prov-git-exclude
	chmod 0644 /etc/prov-git-exclude
	git config --system core.excludesFile /etc/prov-git-exclude ||
		die "cannot set git's excludes file for the placeholders"
fi
# On a remote engine the project is prov's own named volume (filled by rsync
# through the alias), not a host directory: its root is given to the agent.
if [ "${PROV_PROJECT_VOLUME:-0}" = 1 ] && [ -d "${PROV_PROJECT_DIR:-}" ]; then
	chown agent:agent -- "$PROV_PROJECT_DIR" || die "cannot give $PROV_PROJECT_DIR to agent"
fi

# --- 4. keys -------------------------------------------------------------------
if [ ! -f "$KEYS/ssh_host_ed25519_key" ] || [ ! -s "$KEYS/authorized_keys" ]; then
	die "the host key or authorized key is missing from $KEYS, which prov mounts from the environment's keys dir; run prov up again"
fi
# Copies, root-owned: sshd ignores a host key others can read, and refuses
# authorized keys owned by anyone but root or the user.
install -o root -g root -m 0600 "$KEYS/ssh_host_ed25519_key" "$HOST_KEY" ||
	die "cannot read the host key in $KEYS (a Docker engine that remaps user namespaces keeps container root from reading the host user's files)"
install -o root -g root -m 0644 "$KEYS/authorized_keys" "$AUTH_KEYS" ||
	die "cannot read the authorized key in $KEYS"
# The environment's CA, when its proxy injects secrets (egress-ca.pem): the
# proxy answers for those hosts with certificates it signs, so the system's
# trust (read by Node through NODE_EXTRA_CA_CERTS, Python, curl, Rust) holds
# it; also as a local CA, so that update-ca-certificates keeps it. The
# bundle is rebuilt from its pristine copy at each start (a CA made again
# replaces the old one, and none is left once there are no secrets).
BUNDLE=/etc/ssl/certs/ca-certificates.crt
LOCAL_CA=/usr/local/share/ca-certificates/prov-egress-ca.crt
if [ -f "$KEYS/egress-ca.pem" ] || [ -f "$BUNDLE.prov-orig" ]; then
	[ -f "$BUNDLE.prov-orig" ] || cp -p "$BUNDLE" "$BUNDLE.prov-orig" ||
		die "cannot keep a copy of $BUNDLE"
	rm -f "$LOCAL_CA"
	if [ -f "$KEYS/egress-ca.pem" ]; then
		install -o root -g root -m 0644 "$KEYS/egress-ca.pem" "$LOCAL_CA" ||
			die "cannot read the environment's CA in $KEYS"
	fi
	{ cat "$BUNDLE.prov-orig" && if [ -f "$LOCAL_CA" ]; then cat "$LOCAL_CA"; fi; } >"$BUNDLE.prov-new" &&
		mv -f "$BUNDLE.prov-new" "$BUNDLE" || die "cannot add the environment's CA to $BUNDLE"
fi

# --- 4b. sudo --------------------------------------------------------------------
if [ "${PROV_SUDO:-0}" = 1 ]; then
	printf 'agent ALL=(ALL) NOPASSWD:ALL\n' >/etc/sudoers.d/prov-agent
	chmod 0440 /etc/sudoers.d/prov-agent
else
	rm -f /etc/sudoers.d/prov-agent
fi

# --- 4c. network -------------------------------------------------------------------
# Each step is one process (iptables-restore, ip -batch): this runs on every
# start's critical path, and an iptables call costs as much as the rule set.
routes=$(ip -4 route show) || die "cannot read the routing table"
case ${PROV_EGRESS:-open} in
allowlist | none)
	# New connections may go to this container itself and, in allowlist
	# mode, to the egress proxy; replies to connections made to it (the
	# host's ssh) pass. Everything else, this machine's own services on the
	# gateway address included, is refused at once. The chain is replaced as
	# a whole, so a restart leaves the same rules. The last rule refuses
	# everything, so nothing reaches the chain's policy; it stays ACCEPT
	# because setting DROP costs a start ~10 ms in nf_tables and changes
	# nothing. (No process below sshd keeps NET_ADMIN to change the rules.)
	proxy_rule="# no egress proxy"
	if [ -n "${PROV_PROXY_ADDR:-}" ]; then
		proxy_rule="-A OUTPUT -d $PROV_PROXY_ADDR/32 -p tcp --dport 3128 -j ACCEPT"
	fi
	iptables-restore <<RULES || die "cannot set up the egress rules (iptables-restore)"
*filter
:OUTPUT ACCEPT [0:0]
-A OUTPUT -o lo -j ACCEPT
-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
$proxy_rule
-A OUTPUT -p tcp -j REJECT --reject-with tcp-reset
-A OUTPUT -j REJECT
COMMIT
RULES
	case $routes in
	default* | *"
default"*)
		ip -4 route del default || die "cannot remove the default route"
		routes=$(ip -4 route show) || die "cannot read the routing table"
		;;
	esac
	;;
open) ;;
*) die "PROV_EGRESS must be allowlist, open or none, got '$PROV_EGRESS'" ;;
esac
# ACK at once on every route. A new ssh login writes two small packets in a
# row twice before the server answers; with the kernel's delayed ACK (40 ms)
# Nagle holds the second until then. Measured here: a fresh login took
# 132 ms, 88 ms with this (the client's side of the same wait is the
# client machine's to remove). Best effort: -force goes on past a route the
# kernel will not change.
batch=""
while IFS= read -r route; do
	[ -n "$route" ] || continue
	batch="${batch}route change $route quickack 1
"
done <<ROUTES_END
$routes
ROUTES_END
if [ -n "$batch" ]; then
	ip -force -batch - >/dev/null 2>&1 <<BATCH_END || :
$batch
BATCH_END
fi
if [ -n "${PROV_PROXY:-}" ]; then
	{
		for var in HTTP_PROXY HTTPS_PROXY http_proxy https_proxy ALL_PROXY all_proxy; do
			printf '%s=%s\n' "$var" "$PROV_PROXY"
		done
		printf 'NO_PROXY=localhost,127.0.0.1,::1\nno_proxy=localhost,127.0.0.1,::1\n'
		# Node's own fetch() reads the variables above only with this set.
		printf 'NODE_USE_ENV_PROXY=1\n'
		# Written by the agents layer when its Node accepts them (it silences
		# the "experimental" warning that setting gives on every start).
		if [ -s /etc/prov/node-options ]; then
			IFS= read -r node_options </etc/prov/node-options || :
			printf 'NODE_OPTIONS=%s\n' "$node_options"
		fi
	} >/etc/prov/proxy.env
else
	: >/etc/prov/proxy.env
fi

# The image's own environment (its ENV lines: a devcontainer's containerEnv,
# what its features set, a --from image's PATH) for sessions, which sshd
# starts with a clean one: pam_env reads /etc/prov/image.env before prov's
# files, and login shells get the image's PATH back after /etc/profile set
# its own (/etc/profile.d/00-prov-image-path.sh). prov's own variables and
# the proxy's (proxy.env) are not the image's; values pam_env would change
# (see config.check_session_value) are left out.
awk 'BEGIN {
	split("HOME HOSTNAME PWD OLDPWD SHLVL TERM USER LOGNAME SHELL MAIL _ container " \
		"HTTP_PROXY HTTPS_PROXY http_proxy https_proxy ALL_PROXY all_proxy NO_PROXY " \
		"no_proxy NODE_USE_ENV_PROXY", names, " ")
	for (i in names) skip[names[i]] = 1
	for (k in ENVIRON) {
		v = ENVIRON[k]
		if (k !~ /^[A-Za-z_][A-Za-z0-9_]*$/ || k ~ /^PROV_/ || (k in skip)) continue
		if (v ~ /[\n\r#]/ || v ~ /^["\047]/ || v ~ /\\$/ || length(k v) > 8000) continue
		print k "=" v
		if (k == "PATH") print "PROV_IMAGE_PATH=" v
	}
}' >/etc/prov/image.env.new && mv -f /etc/prov/image.env.new /etc/prov/image.env || :
chmod 0644 /etc/prov/image.env 2>/dev/null || :

# --- 5. sshd -----------------------------------------------------------------
# The image build checked the configuration (sshd -t); a host key or config
# problem found now makes sshd itself exit with its message in `docker logs`,
# which prov shows.
mkdir -p /run/sshd
chmod 0755 /run/sshd
# Give up the capabilities only the steps above needed (bits 8 and 12 of the
# bounding set: SETPCAP, NET_ADMIN) for good.
# Agent forwarding is off in the image's config; `prov up --forward-agent`
# turns it on for this environment only (a command-line -o wins over the file).
set -- -D -e
if [ "${PROV_FORWARD_AGENT:-0}" = 1 ]; then
	set -- "$@" -o AllowAgentForwarding=yes
fi
bounding=$(awk '/^CapBnd:/ { print $2 }' /proc/self/status)
if [ $((0x$bounding & 0x100)) -ne 0 ]; then
	exec setpriv --bounding-set -net_admin,-setpcap -- /usr/sbin/sshd "$@"
fi
exec /usr/sbin/sshd "$@"

#!/bin/sh
# Build-time helper of prov's agents layer (docker/agents/Dockerfile),
# installed as /usr/local/lib/prov/agents-build.sh. Not used at run time.
#
#   agents-build.sh check        validate every build argument (its own
#                                stage runs first, so a bad argument fails
#                                the build in seconds, before any download)
#   agents-build.sh node DEST    install Node (NODE_MAJOR) and npm
#                                (NPM_VERSION) into DEST/{bin,lib,share,etc},
#                                laid out like an official Node tarball, if
#                                AGENTS selects any agent; else leave DEST empty
#   agents-build.sh install NAME npm-install agent NAME (claude, codex or
#                                gemini) system-wide if AGENTS selects it
#
# Build arguments arrive as environment variables: AGENTS, NODE_MAJOR,
# NPM_VERSION, NPM_REGISTRY, CLAUDE_CODE_VERSION, CODEX_VERSION,
# GEMINI_CLI_VERSION. Each step reads only those the Dockerfile declares
# before it, so that, e.g., a new Claude Code version does not reinstall Node.
set -eu

SYSTEM_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

die() {
	printf 'prov agents: %s\n' "$*" >&2
	exit 1
}

# Agent table: NAME -> npm package, build argument with its version.
package_of() {
	case $1 in
	claude) echo @anthropic-ai/claude-code ;;
	codex) echo @openai/codex ;;
	gemini) echo @google/gemini-cli ;;
	esac
}
version_var_of() {
	case $1 in
	claude) echo CLAUDE_CODE_VERSION ;;
	codex) echo CODEX_VERSION ;;
	gemini) echo GEMINI_CLI_VERSION ;;
	esac
}
version_of() {
	eval "printf '%s' \"\${$(version_var_of "$1"):-}\""
}

# The selected agents, one word each ("claude,codex" or "claude, codex").
selected() {
	printf '%s' "${AGENTS:-}" | tr ',' ' '
}
is_selected() {
	for s in $(selected); do
		[ "$s" = "$1" ] && return 0
	done
	return 1
}

check_agents_list() {
	for s in $(selected); do
		case $s in
		claude | codex | gemini) ;;
		*) die "AGENTS: unknown agent '$s' (known: claude, codex, gemini)" ;;
		esac
	done
}

# check_agent NAME: a selected agent needs an exact version; an unselected
# one must have none (the image's labels would claim an agent it lacks).
check_agent() {
	var=$(version_var_of "$1")
	ver=$(version_of "$1")
	if is_selected "$1"; then
		[ -n "$ver" ] ||
			die "AGENTS selects $1, but build argument $var (the exact $(package_of "$1") version) is missing"
		printf '%s\n' "$ver" |
			grep -Eqx '[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?' ||
			die "$var must be an exact version such as 1.2.3, got '$ver'"
	elif [ -n "$ver" ]; then
		die "$var is set to '$ver', but AGENTS ('${AGENTS:-}') does not select $1"
	fi
}

check_node_args() {
	[ -n "$(selected)" ] || return 0
	printf '%s\n' "${NODE_MAJOR:-}" | grep -Eqx '[0-9]+(\.[0-9]+\.[0-9]+)?' ||
		die "NODE_MAJOR must be a Node major version such as 22 (or an exact x.y.z), got '${NODE_MAJOR:-}'"
	[ "${NODE_MAJOR%%.*}" -ge 20 ] ||
		die "NODE_MAJOR must be 20 or newer (Gemini CLI needs Node >= 20), got '$NODE_MAJOR'"
	[ -n "${NPM_VERSION:-}" ] || die "NPM_VERSION must not be empty"
}

check_all() {
	check_agents_list
	for a in claude codex gemini; do
		check_agent "$a"
	done
	check_node_args
	if [ -n "$(selected)" ]; then
		echo "prov agents: installing $(selected) on Node $NODE_MAJOR"
	else
		echo "prov agents: AGENTS is empty: no Node, no agents"
	fi
}

# install_node DEST: runs in a throw-away build stage. Debian's own nodejs
# and npm (Node 18) only fetch the packages; they never reach the image.
install_node() {
	dest=$1
	check_agents_list
	check_node_args
	mkdir -p "$dest"
	if [ -z "$(selected)" ]; then
		echo "prov agents: no agent selected: not installing Node"
		return 0
	fi

	export HOME=/tmp/prov-node-home
	mkdir -p "$HOME"
	case $(uname -m) in
	x86_64) arch=x64 ;;
	aarch64 | arm64) arch=arm64 ;;
	*) die "no Node package for CPU architecture '$(uname -m)'" ;;
	esac

	# node-linux-ARCH carries the official Node binary (the "node" package
	# installs the same one, but behind a symlink, which makes npm's global
	# prefix the package's directory instead of /usr/local).
	work=/tmp/prov-node-pack
	rm -rf "$work"
	mkdir -p "$work/node" "$dest/bin" "$dest/lib/node_modules/npm" "$dest/etc"
	cd "$work"
	fetched=no
	if [ -n "${NPM_REGISTRY:-}" ] && command -v python3 >/dev/null 2>&1; then
		# Straight from the registry prov was told (the host's npm setting), both
		# tarballs at once: no Debian nodejs/npm to install first (~25 s).
		python3 /usr/local/lib/prov/npm-fetch.py "$NPM_REGISTRY" "node-linux-$arch" "$NODE_MAJOR" "$work" &
		node_pid=$!
		if python3 /usr/local/lib/prov/npm-fetch.py "$NPM_REGISTRY" npm "$NPM_VERSION" "$work" &&
			wait "$node_pid"; then
			fetched=yes
		else
			wait "$node_pid" || true
			echo "prov agents: fetching from $NPM_REGISTRY directly failed; using Debian's npm"
			rm -f "$work"/*.tgz
		fi
	fi
	if [ "$fetched" = no ]; then
		apt-get update
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm
		if [ -n "${NPM_REGISTRY:-}" ]; then
			export npm_config_registry="$NPM_REGISTRY"
		fi
		npm pack --silent "node-linux-$arch@$NODE_MAJOR" "npm@$NPM_VERSION" >/dev/null
	fi
	set -- node-linux-"$arch"-*.tgz
	if [ "$#" != 1 ] || [ ! -f "$1" ]; then
		die "npm pack did not fetch node-linux-$arch@$NODE_MAJOR"
	fi
	tar -xzf "$1" -C "$work/node" --no-same-owner
	set -- npm-*.tgz
	if [ "$#" != 1 ] || [ ! -f "$1" ]; then
		die "npm pack did not fetch npm@$NPM_VERSION"
	fi
	tar -xzf "$1" -C "$dest/lib/node_modules/npm" --strip-components=1 --no-same-owner

	install -m 0755 "$work/node/package/bin/node" "$dest/bin/node"
	if [ -f "$work/node/package/share/man/man1/node.1" ]; then
		install -D -m 0644 "$work/node/package/share/man/man1/node.1" "$dest/share/man/man1/node.1"
	fi
	chmod -R u+rwX,go+rX,go-w "$dest/lib/node_modules/npm"
	chmod 0755 "$dest/lib/node_modules/npm/bin/npm-cli.js" "$dest/lib/node_modules/npm/bin/npx-cli.js"
	if [ -f "$dest/lib/node_modules/npm/bin/node-gyp-bin/node-gyp" ]; then
		chmod 0755 "$dest/lib/node_modules/npm/bin/node-gyp-bin/node-gyp"
	fi
	ln -s ../lib/node_modules/npm/bin/npm-cli.js "$dest/bin/npm"
	ln -s ../lib/node_modules/npm/bin/npx-cli.js "$dest/bin/npx"

	# npm's global config ($PREFIX/etc/npmrc): trust the system CA store
	# (which holds the CAs from ca/) even when NODE_EXTRA_CA_CERTS is not
	# in the environment, e.g. under sudo; keep the build's registry.
	{
		echo "# Written by prov's agents layer."
		echo "cafile=$SYSTEM_CA_BUNDLE"
		if [ -n "${NPM_REGISTRY:-}" ]; then
			echo "registry=$NPM_REGISTRY"
		fi
		echo "update-notifier=false"
	} >"$dest/etc/npmrc"
	chmod 0644 "$dest/etc/npmrc"

	echo "prov agents: node $("$dest/bin/node" --version)," \
		"npm $("$dest/bin/node" "$dest/lib/node_modules/npm/bin/npm-cli.js" --version)"
}

install_agent() {
	a=$1
	case $a in
	claude | codex | gemini) ;;
	*) die "install: unknown agent '$a'" ;;
	esac
	check_agents_list
	check_agent "$a"
	if ! is_selected "$a"; then
		echo "prov agents: $a not selected"
		return 0
	fi
	pkg=$(package_of "$a")
	ver=$(version_of "$a")
	[ -x /usr/local/bin/npm ] || die "/usr/local/bin/npm is missing (Node was not installed)"

	# A throw-away HOME: npm's cache and logs, and whatever the smoke test
	# writes, stay out of the image. Not under /tmp: codex warns about that.
	export HOME=/root/prov-agents-home
	mkdir -p "$HOME"
	npm install --global --no-audit --no-fund --loglevel=warn "$pkg@$ver"

	got=$(node -p "require('/usr/local/lib/node_modules/$pkg/package.json').version")
	[ "$got" = "$ver" ] || die "$pkg: wanted $ver, npm installed $got"
	[ -x "/usr/local/bin/$a" ] || die "$pkg did not install /usr/local/bin/$a"
	# Smoke test: the command starts (native parts present, Node new enough).
	out=$("/usr/local/bin/$a" --version </dev/null 2>&1) ||
		die "'$a --version' failed: $out"
	echo "prov agents: $a --version: $out"

	npm cache clean --force 2>/dev/null
	rm -rf "$HOME" /tmp/node-compile-cache
}

case ${1:-} in
check) check_all ;;
node)
	[ "$#" = 2 ] || die "usage: agents-build.sh node DEST"
	install_node "$2"
	;;
install)
	[ "$#" = 2 ] || die "usage: agents-build.sh install NAME"
	install_agent "$2"
	;;
*) die "usage: agents-build.sh check | node DEST | install NAME" ;;
esac

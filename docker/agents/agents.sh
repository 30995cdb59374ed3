#!/bin/sh
# Build-time helper of prov's agents layer (docker/agents/Dockerfile).
#
#   agents.sh check          validate every build argument (run first, so a
#                            bad argument fails the build in seconds)
#   agents.sh install NAME   install agent NAME (claude, codex or gemini) with
#                            npm if AGENTS selects it, else do nothing
#
# Reads the build arguments from the environment: AGENTS, NODE_MAJOR,
# CLAUDE_CODE_VERSION, CODEX_VERSION, GEMINI_CLI_VERSION.
set -eu

die() {
	printf 'prov agents: %s\n' "$*" >&2
	exit 1
}

# Agent table: NAME -> npm package, version variable, command.
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

# The selected agents, one word each ("claude,codex" or "claude, codex").
selected() {
	printf '%s' "${AGENTS:-}" | tr ',' ' '
}

is_selected() {
	for a in $(selected); do
		[ "$a" = "$1" ] && return 0
	done
	return 1
}

version_of() {
	eval "printf '%s' \"\${$(version_var_of "$1"):-}\""
}

check() {
	for a in $(selected); do
		case $a in
		claude | codex | gemini) ;;
		*) die "AGENTS: unknown agent '$a' (known: claude, codex, gemini)" ;;
		esac
	done
	for a in claude codex gemini; do
		var=$(version_var_of "$a")
		ver=$(version_of "$a")
		if is_selected "$a"; then
			[ -n "$ver" ] ||
				die "AGENTS selects $a, but build argument $var (the exact $(package_of "$a") version) is missing"
			printf '%s\n' "$ver" |
				grep -Eqx '[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?' ||
				die "$var must be an exact version such as 1.2.3, got '$ver'"
		elif [ -n "$ver" ]; then
			# The image's labels would claim an agent that is not installed.
			die "$var is set to '$ver', but AGENTS ('${AGENTS:-}') does not select $a"
		fi
	done
	if [ -n "$(selected)" ]; then
		case ${NODE_MAJOR:-} in
		'' | *[!0-9.]* | .* | *.) die "NODE_MAJOR must be a Node major version such as 22 (or an exact x.y.z), got '${NODE_MAJOR:-}'" ;;
		esac
		[ "${NODE_MAJOR%%.*}" -ge 20 ] ||
			die "NODE_MAJOR must be 20 or newer (Gemini CLI needs Node >= 20), got '$NODE_MAJOR'"
	fi
}

install_agent() {
	a=$1
	case $a in
	claude | codex | gemini) ;;
	*) die "install: unknown agent '$a'" ;;
	esac
	if ! is_selected "$a"; then
		echo "prov agents: $a not selected"
		return 0
	fi
	pkg=$(package_of "$a")
	ver=$(version_of "$a")
	[ -n "$ver" ] || die "no version for $a"
	command -v npm >/dev/null || die "npm is missing (was Node installed?)"

	# A throw-away HOME: npm's cache and logs, and whatever the smoke test
	# writes, stay out of the image.
	export HOME=/tmp/prov-agents-home
	mkdir -p "$HOME"
	npm install --global --no-audit --no-fund --loglevel=warn "$pkg@$ver"

	got=$(node -p "require('/usr/local/lib/node_modules/$pkg/package.json').version")
	[ "$got" = "$ver" ] || die "$pkg: wanted $ver, npm installed $got"
	[ -x "/usr/local/bin/$a" ] || die "$pkg did not install /usr/local/bin/$a"
	# Smoke test: the command starts (native binaries present, Node new
	# enough).
	printf 'prov agents: %s --version: ' "$a"
	"/usr/local/bin/$a" --version </dev/null || die "'$a --version' failed"

	npm cache clean --force 2>/dev/null
	rm -rf "$HOME" /tmp/node-compile-cache
}

case ${1:-} in
check) check ;;
install)
	[ "$#" = 2 ] || die "usage: agents.sh install NAME"
	check
	install_agent "$2"
	;;
*) die "usage: agents.sh check | install NAME" ;;
esac

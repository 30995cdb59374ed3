#!/usr/bin/env bash
# One-time setup on a fresh Debian/Ubuntu machine: system packages prov and its
# tests need, a running Docker engine, and prov itself in ./.venv.
# Idempotent: re-running it only fills in what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
# sshd: only its binary, for the remote Docker hosts the test suite builds in
# network namespaces (see below: its service is not left running).
new_sshd=0
if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then
  need+=(openssh-server)
  new_sshd=1
fi
command -v tmux >/dev/null 2>&1 || need+=(tmux)
command -v git >/dev/null 2>&1 || need+=(git)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
# setfacl: prov as root gives the agent access to a root-owned project with an ACL.
command -v setfacl >/dev/null 2>&1 || need+=(acl)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
# npm: the devcontainers CLI (for devcontainer.json features) comes from the
# npm registry, as a user would install it.
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
fi
if [ "$new_sshd" = 1 ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  # Installing openssh-server starts an SSH server on port 22 under systemd;
  # this machine had none, and prov's tests need none running.
  $SUDO systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
  echo "setup: installed openssh-server for the tests' remote hosts; its service is disabled"
fi

$SUDO scripts/start-dockerd.sh

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q -e '.[test]'
# The devcontainers CLI, into the venv (nothing global): prov runs it for a
# devcontainer.json with features, and the tests drive the real one.
DEVCONTAINER_CLI_VERSION=0.89.0
if [ "$(.venv/bin/devcontainer --version 2>/dev/null)" != "$DEVCONTAINER_CLI_VERSION" ]; then
  npm install -g -q --no-fund --no-audit --prefix .venv "@devcontainers/cli@$DEVCONTAINER_CLI_VERSION" >/dev/null
fi
echo "setup: ready. prov is .venv/bin/prov (activate with: . .venv/bin/activate)"

#!/usr/bin/env bash
# Start a Docker engine where none runs (CI machines and fresh dev boxes have
# no systemd). Safe to run when one is already up: it then does nothing.
set -euo pipefail

deadline_s=${DOCKERD_START_TIMEOUT:-60}
log=${DOCKERD_LOG:-/var/log/dockerd.log}

if docker info >/dev/null 2>&1; then
  exit 0
fi

# A dockerd killed hard leaves its pid file; a new one refuses to start while
# the old process is still dying, so wait for it, then clear a stale file.
pidfile=/var/run/docker.pid
if [ -f "$pidfile" ]; then
  old=$(cat "$pidfile" 2>/dev/null || true)
  for _ in $(seq 1 100); do
    if [ -n "$old" ] && kill -0 "$old" 2>/dev/null; then sleep 0.1; else break; fi
  done
  if [ -n "$old" ] && kill -0 "$old" 2>/dev/null; then
    echo "start-dockerd: dockerd (pid $old) is running but not answering; stop it and retry" >&2
    exit 1
  fi
  rm -f "$pidfile"
fi
# containerd leaves its own pid file behind in the same way.
rm -f /run/docker/containerd/containerd.pid 2>/dev/null || true

nohup dockerd >"$log" 2>&1 &
for _ in $(seq 1 $((deadline_s * 5))); do
  if docker info >/dev/null 2>&1; then
    exit 0
  fi
  sleep 0.2
done
echo "start-dockerd: dockerd did not answer within ${deadline_s}s; last lines of $log:" >&2
tail -n 20 "$log" >&2 || true
exit 1

#!/usr/bin/env bash
# Drive container healthchecks where no systemd runs podman's healthcheck timers: every
# INTERVAL seconds, `podman healthcheck run` on each running container that has a healthcheck
# (so that compose's `depends_on: condition: service_healthy` and `docker ps` see real states).
#
#   CONTAINERS_CONF=scripts/podman/containers.conf scripts/podman/healthcheck-loop.sh [INTERVAL]
set -uo pipefail
INTERVAL=${1:-3}
while true; do
  for id in $(podman ps -q 2>/dev/null); do
    if [ -n "$(podman inspect --format '{{.Config.Healthcheck}}' "$id" 2>/dev/null | grep -v '<nil>')" ]; then
      podman healthcheck run "$id" >/dev/null 2>&1 || true
    fi
  done
  sleep "$INTERVAL"
done

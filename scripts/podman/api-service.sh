#!/usr/bin/env bash
# podman's Docker-compatible API on a unix socket, for docker-compose (DOCKER_HOST), with the
# settings this kind of machine needs (containers.conf: runc, lowered ulimits). Runs until killed.
#
#   scripts/podman/api-service.sh /run/tuneloop-podman.sock &
#   DOCKER_HOST=unix:///run/tuneloop-podman.sock docker-compose ... up -d
set -euo pipefail
SOCK=${1:-/run/podman/podman.sock}
HERE=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$HERE/containers.conf}
mkdir -p "$(dirname "$SOCK")"
exec podman system service --time=0 "unix://$SOCK"

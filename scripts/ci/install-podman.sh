#!/usr/bin/env bash
# podman (+ runc, netavark/aardvark-dns for service-name DNS, debootstrap for the local base image):
# builds and runs the service images for tests/test_containers.py; docker-compose talks to
# podman's Docker-compatible socket (scripts/podman/). No Docker engine or registry needed.
set -euo pipefail
apt-get install -y -qq --no-install-recommends \
  podman runc conmon netavark aardvark-dns iptables catatonit uidmap \
  debootstrap ca-certificates docker-compose >/dev/null

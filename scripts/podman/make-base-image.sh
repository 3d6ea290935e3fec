#!/usr/bin/env bash
# Make the `python:3.11-slim` base image locally, so that image builds pull nothing.
#
# A Debian bookworm minbase root (debootstrap, OS packages: python3 3.11, venv, pip,
# ca-certificates) imported into podman under the tag the Dockerfiles name. The machine's own
# extra CA certificates are added (TLS may be intercepted on the way to the package registries),
# and pip is told to use the system store. Idempotent: does nothing when the tag already exists
# with our label (pass --force to rebuild).
#
#   sudo scripts/podman/make-base-image.sh [--force]
set -euo pipefail
TAG=${TUNELOOP_BASE_TAG:-python:3.11-slim}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${TUNELOOP_BASE_WORKDIR:-$HERE/../../build/podman-base}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$HERE/containers.conf}

if [ "${1:-}" != "--force" ] && \
   [ "$(podman image inspect --format '{{index .Labels "io.tuneloop.stand-in"}}' "$TAG" 2>/dev/null)" = "debootstrap" ]; then
  echo "base image $TAG present"; exit 0
fi
rm -rf "$WORK"; mkdir -p "$WORK"
ROOTFS="$WORK/rootfs"
debootstrap --variant=minbase \
  --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,netbase,tzdata \
  bookworm "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || { tail -30 "$WORK/debootstrap.log"; exit 1; }

# the host's extra CA certificates (those not already in Debian's set), kept across
# update-ca-certificates runs in derived images
python3 "$HERE/extra_cas.py" /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt" \
  "$ROOTFS/usr/local/share/ca-certificates"
chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1 || true
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\ndisable-pip-version-check = true\n' \
  >"$ROOTFS/etc/pip.conf"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/share/doc/* \
  "$ROOTFS"/usr/share/man/* "$ROOTFS"/var/log/*.log

tar -C "$ROOTFS" -c . | podman import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'LABEL io.tuneloop.stand-in=debootstrap' \
  --change 'CMD ["python3"]' \
  - "$TAG" >/dev/null
rm -rf "$ROOTFS"
echo "base image $TAG made ($(podman image inspect --format '{{.Size}}' "$TAG") bytes)"

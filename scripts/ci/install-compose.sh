#!/usr/bin/env bash
# docker-compose: validates docker-compose.yml statically (no engine needed)
set -euo pipefail
apt-get install -y -qq --no-install-recommends docker-compose >/dev/null

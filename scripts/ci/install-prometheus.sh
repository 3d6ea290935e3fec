#!/usr/bin/env bash
# Prometheus server + promtool: tests check/unit-test deploy/prometheus with promtool and start a
# real prometheus process against the running services (the packaged service is not started).
set -euo pipefail
command -v prometheus >/dev/null && command -v promtool >/dev/null && exit 0
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v prometheus >/dev/null && command -v promtool >/dev/null

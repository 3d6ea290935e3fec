#!/usr/bin/env bash
# PostgreSQL server binaries (initdb, pg_ctl, postgres): tests start a throwaway server of their own
# (tuneloop.testing.postgres) as the postgres user; the packaged cluster service is not used.
set -euo pipefail
if ! command -v pg_ctl >/dev/null && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null

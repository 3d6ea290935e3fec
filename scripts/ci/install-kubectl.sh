#!/usr/bin/env bash
# kubectl (its built-in kustomize renders k8s/ for the schema tests). The CI machine image ships
# it; Debian bookworm has no kubectl package, so when it is missing we say so and the static
# k8s test fails with a clear reason under TUNELOOP_REQUIRE_TOOLS=1.
set -euo pipefail
if command -v kubectl >/dev/null; then
  kubectl version --client 2>/dev/null | head -1 || true
else
  apt-get install -y -qq --no-install-recommends kubectl >/dev/null 2>&1 \
    || echo "kubectl not available from the configured package sources" >&2
fi

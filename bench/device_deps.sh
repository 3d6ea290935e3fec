#!/usr/bin/env bash
# Download the services' own deps for the GPU device (no registry there) into .gpu/tl-deps
# (ignored; see ../shared/gpu/README.md for the other payloads). Run from the repo root:
#   bench/device_deps.sh
# On the device, in a call of its own (carry .gpu/tl-deps):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/tldeps .gpu/tl-deps/*.whl
# then put /tmp/tldeps at the END of PYTHONPATH (the device's own packages win).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu/tl-deps && mkdir -p .gpu/tl-deps
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
  -d .gpu/tl-deps -r bench/device-deps.txt
du -sh .gpu/tl-deps

#!/usr/bin/env bash
# chromium: headless browser for the web console's end-to-end tests (tests/test_console_browser.py,
# driven by Playwright with executable_path=/usr/bin/chromium; no browser download), plus a font
set -euo pipefail
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null

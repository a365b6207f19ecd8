#!/usr/bin/env bash
# Installs what the browser tests in tests/e2e need on a fresh Debian machine:
# Debian's chromium (driven by playwright-core, which downloads no browser of
# its own), CJK fonts so the screenshots show Chinese, and the npm packages
# pinned in tests/e2e/package-lock.json. Safe to run again: each step is
# skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ] || ! dpkg -s fonts-noto-cjk >/dev/null 2>&1; then
  echo "== apt-get install chromium fonts-noto-cjk"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    chromium fonts-noto-cjk fontconfig >/dev/null
fi

if ! command -v npm >/dev/null; then
  echo "e2e-setup: npm is missing; install Node.js 18 or newer (apt-get install nodejs npm)" >&2
  exit 1
fi

echo "== npm install in tests/e2e"
cd tests/e2e
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  npm install --no-audit --no-fund --loglevel=error
fi

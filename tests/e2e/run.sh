#!/usr/bin/env bash
# Browser tests of the kefu pages: builds kefu, then runs every
# tests/e2e/*.test.mjs with node's test runner (playwright-core driving
# /usr/bin/chromium against the real `kefu serve`). Screenshots and the TAP
# log land in tests/e2e/artifacts/. Needs scripts/e2e-setup.sh once.
# Exits non-zero on any failure; the last line reads "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/../.."
E2E=tests/e2e
ART=$E2E/artifacts

fail_setup() {
  echo "e2e: $1" >&2
  echo "0 passed, 1 failed"
  exit 1
}

[ -x "${KEFU_CHROMIUM:-/usr/bin/chromium}" ] || fail_setup "no chromium at ${KEFU_CHROMIUM:-/usr/bin/chromium}; run scripts/e2e-setup.sh"
[ -d $E2E/node_modules/playwright-core ] || fail_setup "playwright-core is not installed; run scripts/e2e-setup.sh"
command -v node >/dev/null || fail_setup "node is missing; run scripts/e2e-setup.sh"

echo "== cargo build --bin kefu"
cargo build --quiet --bin kefu || fail_setup "cargo build failed"

mkdir -p $ART
rm -f $ART/*.png $ART/results.tap
echo "== node --test $E2E/*.test.mjs"
node --test --test-concurrency=1 \
  --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination=$ART/results.tap \
  $E2E/*.test.mjs
rc=$?

pass=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' $ART/results.tap | tail -1)
fail=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' $ART/results.tap | tail -1)
cancelled=$(sed -n 's/^# cancelled \([0-9]*\)$/\1/p' $ART/results.tap | tail -1)
pass=${pass:-0}
fail=$(( ${fail:-0} + ${cancelled:-0} ))
if [ "$rc" -ne 0 ] && [ "$fail" -eq 0 ]; then fail=1; fi
echo "screenshots: $ART/"
echo "$pass passed, $fail failed"
exit $rc

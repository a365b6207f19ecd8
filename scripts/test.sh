#!/usr/bin/env bash
# The test command of the README: every unit, integration and doc test,
# then the phrase libraries' own check and, where ../shared is present,
# the accuracy on the labelled dev set (printed, not asserted here: the
# matcher tests in src/tests.rs hold the hand-written expectations).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --bin kefu
./target/debug/kefu check phrases

if [ -f ../shared/corpus/labeled_dev.tsv ]; then
  echo "== accuracy on ../shared/corpus/labeled_dev.tsv"
  ./target/debug/kefu eval --quiet ../shared/corpus/labeled_dev.tsv
else
  echo "== ../shared/corpus absent: accuracy check skipped"
fi

cargo test --all-targets
cargo test --doc

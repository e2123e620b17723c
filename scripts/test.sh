#!/usr/bin/env bash
# scripts/test.sh — set up and run every test of Kapsel.
#
#   scripts/test.sh           everything: unit tests, KVM tests with the test
#                             guests, and the real Linux guest in the nested
#                             testbed (several minutes)
#   scripts/test.sh --quick   without the nested testbed
#
# Prints whether /dev/kvm and the nested testbed were used, and ends with
# "N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

nested=1
[ "${1:-}" = "--quick" ] && nested=0

bash scripts/setup.sh || exit 1
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    echo "test: /dev/kvm is usable: KVM tests run with the test guests"
else
    echo "test: /dev/kvm is not usable here: KVM tests will SKIP"
fi
if [ "$nested" = 1 ]; then
    export KAPSEL_NESTED=1
    echo "test: the nested testbed runs (Linux guest under kapsel inside QEMU TCG + SVM)"
else
    echo "test: the nested testbed is skipped (--quick)"
fi

log=$(mktemp)
cargo build --workspace --all-targets || exit 1
# --nocapture so that each test's SKIP line reaches the log to be counted.
cargo test --workspace --no-fail-fast -- --nocapture 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

passed=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i+1) ~ /^passed/) n += $i } END { print n + 0 }' "$log")
failed=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i+1) ~ /^failed/) n += $i } END { print n + 0 }' "$log")
skipped=$(grep -c '^SKIP: ' "$log")
# A skipped test reports itself as passed to cargo; count it once, as skipped.
passed=$((passed - skipped))
rm -f "$log"
echo
echo "test: KVM $( [ -w /dev/kvm ] && echo used || echo 'not available' ), nested testbed $( [ "$nested" = 1 ] && echo used || echo skipped )"
echo "${passed:-0} passed, ${failed:-0} failed, ${skipped:-0} skipped"
exit "$status"

#!/usr/bin/env bash
# scripts/demo.sh — boot a real Linux guest with kapsel: Debian's cloud
# kernel and a busybox initramfs, with a shell on the serial console.
#
# Usage: scripts/demo.sh [--non-interactive] [--nested] [--kapsel PATH]
#   --non-interactive  for CI: boot with kapsel.test=poweroff, check that the
#                      guest came up (KAPSEL-GUEST-UP) and powered off
#   --nested           skip the probe, use the nested testbed
#   --kapsel PATH      use this kapsel binary instead of building one
#
# Steps: build kapsel (cargo build --release -p kapsel), build the testbed
# artefacts (scripts/testbed/build.sh), then probe whether this host's KVM
# runs guest kernel code at hardware speed. If it does, kapsel boots the
# guest right here; if not (nested virtualization without hardware support,
# as on our CI machines), the same command runs inside the nested testbed
# (scripts/testbed/run.sh). In the guest's shell, `poweroff` leaves.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
TB=${KAPSEL_TESTBED_DIR:-$REPO/.testbed}
export KAPSEL_TESTBED_DIR=$TB
TARGET=${CARGO_TARGET_DIR:-$REPO/target}

interactive=1
force_nested=0
KAPSEL=""
while [ $# -gt 0 ]; do
    case $1 in
    --non-interactive) interactive=0 ;;
    --nested) force_nested=1 ;;
    --kapsel)
        [ $# -ge 2 ] || { echo "demo: --kapsel needs a path" >&2 && exit 2; }
        KAPSEL=$2
        shift
        ;;
    -h | --help)
        sed -n '2,/^set -e/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "demo: unknown argument '$1' (try --help)" >&2
        exit 2
        ;;
    esac
    shift
done

say() { echo "demo: $*" >&2; }
die() {
    echo "demo: error: $*" >&2
    exit 1
}

say "installing what the demo needs (scripts/setup.sh)"
bash "$REPO/scripts/setup.sh" >&2 || die "scripts/setup.sh failed"
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
if [ -z "$KAPSEL" ]; then
    say "building kapsel and its probe guest (cargo build --release -p kapsel -p kapsel-testguest)"
    (cd "$REPO" && cargo build --release -p kapsel -p kapsel-testguest) ||
        die "cargo build --release failed"
    KAPSEL=$TARGET/release/kapsel
fi
[ -x "$KAPSEL" ] || die "no kapsel binary at $KAPSEL"

say "building the guest kernel and initramfs (scripts/testbed/build.sh)"
"$REPO/scripts/testbed/build.sh" --quiet || die "scripts/testbed/build.sh failed"
KERNEL=$TB/l2-vmlinuz
INITRD=$TB/l2-initrd.cpio

# >>> PROBE: the CPL-0 loop test guest (2 M iterations at CPL 0, then power
# off): milliseconds on hardware KVM, seconds where KVM emulates guest kernel
# code. Built by crates/kapsel-testguest; adjust the pattern if it moves.
PROBE=$(find "$TARGET/release/build" -path '*/kapsel-testguest-*/out/cpl0loop.elf' \
    -print 2>/dev/null | head -n 1 || true)
PROBE_LIMIT_MS=500
# <<< PROBE

# Succeeds when the host's KVM runs guest kernel code at hardware speed.
host_kvm_runs_linux() {
    local start elapsed_ms
    if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
        say "/dev/kvm is not accessible"
        return 1
    fi
    if [ -z "$PROBE" ] || [ ! -f "$PROBE" ]; then
        say "KVM probe guest cpl0loop.elf not found under $TARGET/release/build"
        return 1
    fi
    start=$(date +%s%N)
    if ! timeout 5 "$KAPSEL" run --kernel "$PROBE" --console none >/dev/null 2>&1; then
        say "KVM probe did not finish within 5 s"
        return 1
    fi
    elapsed_ms=$((($(date +%s%N) - start) / 1000000))
    say "KVM probe: ${elapsed_ms} ms for 2 M guest-kernel loop iterations"
    [ "$elapsed_ms" -lt "$PROBE_LIMIT_MS" ]
}

if [ "$interactive" = 1 ]; then
    test_action=shell
else
    test_action=poweroff
fi
CMDLINE="console=ttyS0 quiet kapsel.test=$test_action"

# Checks the guest console log $1 of a --non-interactive run.
check_console() {
    grep -q 'KAPSEL-GUEST-UP' "$1" || die "the guest did not come up (no KAPSEL-GUEST-UP on its console)"
    grep -q "KAPSEL-TEST=poweroff" "$1" || die "the guest did not reach its power-off step"
    say "OK: the guest came up ($(grep -o 'KAPSEL-NPROC=[0-9]*' "$1" | head -n 1), $(grep -o 'KAPSEL-MEMTOTAL-KB=[0-9]*' "$1" | head -n 1)) and powered off"
}

if [ "$force_nested" = 0 ] && host_kvm_runs_linux; then
    say "booting the guest on this host's KVM"
    run=("$KAPSEL" run --kernel "$KERNEL" --initrd "$INITRD" --cmdline "$CMDLINE"
        --memory 256M --cpus 2 --console stdio)
    if [ "$interactive" = 1 ]; then
        say "busybox shell on the guest's console; 'poweroff' leaves"
        exec "${run[@]}"
    fi
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    status=0
    timeout 60 "${run[@]}" </dev/null >"$log" 2>&1 || status=$?
    cat "$log"
    [ "$status" = 0 ] || die "kapsel run exited with status $status"
    check_console "$log"
    exit 0
fi

say "this host's KVM emulates guest kernel code (nested virtualization without hardware support); running the demo inside the nested testbed, ~10 s to boot"
job=$(mktemp)
out=$(mktemp -d)
trap 'rm -rf "$job" "$out"' EXIT
if [ "$interactive" = 1 ]; then
    cat >"$job" <<EOF
#!/bin/sh
echo "demo: kapsel boots the guest; busybox shell on its console, 'poweroff' leaves"
exec kapsel run --kernel "\$KAPSEL_L2_KERNEL" --initrd "\$KAPSEL_L2_INITRD" \\
    --cmdline '$CMDLINE' --memory 256M --cpus 2 --console stdio
EOF
    status=0
    "$REPO/scripts/testbed/run.sh" --kapsel "$KAPSEL" --interactive -- "$job" || status=$?
    exit "$status"
fi
cat >"$job" <<EOF
#!/bin/sh
kapsel run --kernel "\$KAPSEL_L2_KERNEL" --initrd "\$KAPSEL_L2_INITRD" \\
    --cmdline '$CMDLINE' --memory 256M --cpus 2 --console stdio \\
    </dev/null >"\$KAPSEL_OUT/console.log" 2>&1
status=\$?
cat "\$KAPSEL_OUT/console.log"
exit \$status
EOF
status=0
"$REPO/scripts/testbed/run.sh" --kapsel "$KAPSEL" --timeout 300 --out "$out" -- "$job" || status=$?
[ "$status" = 0 ] || die "kapsel run in the nested testbed exited with status $status"
check_console "$out/console.log"

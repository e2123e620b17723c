#!/usr/bin/env bash
# scripts/testbed/selftest.sh — check the testbed itself, without kapsel.
#
# Usage: scripts/testbed/selftest.sh [--with-qemu]
#   1. boots the L2 kernel and initramfs on the host under QEMU TCG with
#      kapsel.test=poweroff, reboot, panic (panic=-1) and panic with a pvpanic
#      device, and checks the console markers and QEMU's exit;
#   2. runs kvmcheck in L1 through run.sh (share, binary launch, kvm-amd);
#   --with-qemu  3. boots L2 under real KVM inside L1 with Debian's QEMU
#      (-M microvm,rtc=on), poweroff and pvpanic panic (slow on a busy host).
# Prints one line per check with its wall time; exits non-zero if one failed.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TB=${KAPSEL_TESTBED_DIR:-$REPO/.testbed}
export KAPSEL_TESTBED_DIR=$TB
with_qemu=0
[ "${1:-}" = --with-qemu ] && with_qemu=1

"$HERE/build.sh" --quiet || exit 1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0

now_ms() { echo $(($(date +%s%N) / 1000000)); }
report() { # NAME OK(0/1) START_MS DETAIL
    local took=$(($(now_ms) - $3))
    if [ "$2" = 0 ]; then
        printf 'PASS %-34s %6d ms  %s\n' "$1" "$took" "$4"
    else
        printf 'FAIL %-34s %6d ms  %s\n' "$1" "$took" "$4"
        failed=1
    fi
}

# l2_tcg NAME APPEND EXPECTED_QEMU_STATUS EXPECTED_MARKER [QEMU ARGS...]
l2_tcg() {
    local name=$1 append=$2 want=$3 marker=$4 start status ok=0
    shift 4
    start=$(now_ms)
    timeout 180 qemu-system-x86_64 -accel tcg -M pc -m 256M -smp 2 -nodefaults \
        -no-user-config -nographic -no-reboot -serial stdio "$@" \
        -kernel "$TB/l2-vmlinuz" -initrd "$TB/l2-initrd.cpio" \
        -append "console=ttyS0 quiet $append" </dev/null >"$work/$name.log" 2>&1
    status=$?
    [ "$status" = "$want" ] || ok=1
    for m in KAPSEL-GUEST-UP KAPSEL-NPROC=2 KAPSEL-MEMTOTAL-KB= KAPSEL-EPOCH= "$marker"; do
        grep -q -- "$m" "$work/$name.log" || ok=1
    done
    report "L2/TCG $name" "$ok" "$start" "qemu status $status (want $want)"
    [ "$ok" = 0 ] || tail -n 20 "$work/$name.log"
}

l2_tcg poweroff "kapsel.test=poweroff" 0 "reboot: Power down"
l2_tcg reboot "kapsel.test=reboot" 0 "reboot: Restarting system"
l2_tcg panic "kapsel.test=panic panic=-1" 0 "Kernel panic - not syncing"
# pvpanic-mmio binds to QEMU's ISA pvpanic (ACPI QEMU0001, port 0x505);
# QEMU then exits with status 1.
l2_tcg pvpanic "kapsel.test=panic" 1 "Kernel panic - not syncing" \
    -device pvpanic -action panic=exit-failure

cat >"$work/kvmcheck.sh" <<'EOF'
#!/bin/sh
/mnt/l1/kvmcheck && echo ok >"$KAPSEL_OUT/kvmcheck"
EOF
start=$(now_ms)
"$HERE/run.sh" --timeout 300 --out "$work/out" --log "$work/l1.log" -- "$work/kvmcheck.sh" >/dev/null 2>&1
status=$?
ok=0
[ "$status" = 0 ] && [ -f "$work/out/kvmcheck" ] && grep -q 'KVMCHECK-API-VERSION=12' "$work/l1.log" || ok=1
report "L1 kvmcheck (run.sh)" "$ok" "$start" "$(grep -o 'KAPSEL-L1-UP [0-9.]*s' "$work/l1.log"), job status $status"
[ "$ok" = 0 ] || tail -n 20 "$work/l1.log"

if [ "$with_qemu" = 1 ]; then
    cat >"$work/qemu.sh" <<'EOF'
#!/bin/sh
# L2 under real KVM in L1, Debian's QEMU as the VMM.
l2() { # NAME WANT APPEND [ARGS]
    name=$1 want=$2 append=$3
    shift 3
    t0=$(cut -d' ' -f1 /proc/uptime)
    qemu-system-x86_64 -enable-kvm -M microvm,rtc=on -m 256M -smp 1 -nodefaults \
        -no-user-config -nographic -no-reboot -serial stdio "$@" \
        -kernel "$KAPSEL_L2_KERNEL" -initrd "$KAPSEL_L2_INITRD" \
        -append "console=ttyS0 quiet $append" </dev/null >"$KAPSEL_OUT/$name.log" 2>&1
    status=$?
    t1=$(cut -d' ' -f1 /proc/uptime)
    echo "L2/KVM-in-L1 $name: qemu status $status (want $want), $(awk "BEGIN { print $t1 - $t0 }") s"
    [ "$status" = "$want" ] && grep -q KAPSEL-GUEST-UP "$KAPSEL_OUT/$name.log"
}
l2 poweroff 0 kapsel.test=poweroff || exit 1
l2 pvpanic 1 kapsel.test=panic -device pvpanic -action panic=exit-failure || exit 1
EOF
    start=$(now_ms)
    "$HERE/run.sh" --timeout 600 --bin "$(command -v qemu-system-x86_64)" --qemu-data \
        --log "$work/l1q.log" -- "$work/qemu.sh" >/dev/null 2>&1
    status=$?
    report "L2 under KVM in L1 (QEMU as VMM)" "$status" "$start" \
        "$(grep -o 'L2/KVM-in-L1 .*s' "$work/l1q.log" | tr -d '\r' | paste -sd ';')"
    [ "$status" = 0 ] || tail -n 20 "$work/l1q.log"
fi

exit "$failed"

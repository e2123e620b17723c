#!/usr/bin/env bash
# bench/nested-diag.sh — where a Linux guest's boot time goes, under Kapsel
# and under QEMU -M microvm,rtc=on, in the nested testbed (the same guest,
# kernel, memory and vCPU as bench/nested.sh).
#
# The guest boots with `initcall_debug printk.time=1` (plus EXTRA, e.g.
# ignore_loglevel) and rdinit=/diag.sh, an init from bench/diag/ that does
# what the testbed's /init does up to KAPSEL-GUEST-UP, then prints the
# guest's view: CPUID leaves (bench/diag/cpuid-dump.c), /proc/cpuinfo
# flags, clocksource, interrupts, ports, PCI and PnP devices, ACPI tables
# and the whole kernel log. In L1 the kvm tracepoints count, per run, the
# VM exits by reason, port, MSR and userspace exit reason (hist triggers).
# Runs alternate (kapsel, qemu, qemu, kapsel, ...). DIAG_TRACE=0 leaves
# the tracepoints off: every exit is then as cheap as in bench/nested.sh, so
# the guest's own times (its clock at the start of init) are comparable.
#
# Usage: bench/nested-diag.sh [RUNS] [EXTRA_CMDLINE]   (default 1 run each)
#        bench/nested-diag.sh --report DIR     (summary of a kept run)
# BENCH_OUT=DIR keeps consoles, exit counts and the summary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VMMS="kapsel microvm-rtc"

if [ "${1:-}" = --report ]; then
    exec python3 bench/diag/report.py "$2"
fi
RUNS=${1:-1}
EXTRA=${2:-}
cargo build --release -q -p kapsel
scripts/testbed/build.sh --quiet
TB=${KAPSEL_TESTBED_DIR:-.testbed}
mkdir -p target/bench/diag-root
gcc -O2 -static -o target/bench/measure bench/measure.c
gcc -O2 -static -o target/bench/diag-root/cpuid-dump bench/diag/cpuid-dump.c
install -m 0755 bench/diag/diag-init.sh target/bench/diag-root/diag.sh
# The kernel unpacks concatenated newc archives in order: the testbed's
# initramfs, then diag.sh and cpuid-dump.
(cd target/bench/diag-root && printf '%s\n' diag.sh cpuid-dump | cpio -o -H newc --quiet) \
    >target/bench/diag-extra.cpio
cat "$TB/l2-initrd.cpio" target/bench/diag-extra.cpio >target/bench/diag-initrd.cpio
out=${BENCH_OUT:-$(mktemp -d)}
mkdir -p "$out"
job=$(mktemp)
cat >"$job" <<'JOB'
#!/bin/sh
CMDLINE="console=ttyS0 quiet mitigations=off initcall_debug printk.time=1 log_buf_len=4M rdinit=/diag.sh $EXTRA"
INITRD=/mnt/files/diag-initrd.cpio
uname -r >"$KAPSEL_OUT/l1-kernel"
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
T=/sys/kernel/tracing/events/kvm
# event:trigger pairs; the same string removes the trigger again.
TRIGGERS="kvm_exit:hist:keys=exit_reason:sort=hitcount.descending
kvm_pio:hist:keys=port,rw:sort=hitcount.descending
kvm_msr:hist:keys=ecx,write:sort=hitcount.descending
kvm_userspace_exit:hist:keys=reason:sort=hitcount.descending
kvm_mmio:hist:keys=type,gpa:sort=hitcount.descending"
set_triggers() { # + or -
    [ "$DIAG_TRACE" = 1 ] || return 0
    echo "$TRIGGERS" | while IFS=: read -r ev spec; do
        if [ "$1" = + ]; then echo "$spec" >"$T/$ev/trigger"; else echo "!$spec" >"$T/$ev/trigger"; fi
    done
}
i=0
while [ $i -lt "$RUNS" ]; do
    i=$((i + 1))
    if [ $((i % 2)) = 1 ]; then order="$VMMS"; else order=$(echo "$VMMS" | awk '{ for (k = NF; k > 0; k--) printf "%s ", $k }'); fi
    for vmm in $order; do
        q="qemu-system-x86_64 -L /mnt/share/qemu -enable-kvm -cpu host -m 256M -smp 1
           -nodefaults -no-user-config -nographic -no-reboot -serial stdio"
        case $vmm in
        kapsel) cmd="$KAPSEL run --memory 256M --cpus 1 --console stdio --kernel $KAPSEL_L2_KERNEL --initrd $INITRD --cmdline" ;;
        microvm-rtc) cmd="$q -M microvm,rtc=on -kernel $KAPSEL_L2_KERNEL -initrd $INITRD -append" ;;
        esac
        set_triggers +
        # shellcheck disable=SC2086 # word splitting of $cmd intended
        measure timeout -s KILL 300 $cmd "$CMDLINE" </dev/null \
            >"$KAPSEL_OUT/$vmm-$i.log" 2>"$KAPSEL_OUT/$vmm-$i.measure" &
        # The exits up to KAPSEL-GUEST-UP are the boot's; the report the
        # guest prints afterwards is not counted.
        while kill -0 $! 2>/dev/null && ! grep -q KAPSEL-GUEST-UP "$KAPSEL_OUT/$vmm-$i.log"; do
            sleep 0.1
        done
        if [ "$DIAG_TRACE" = 1 ]; then
            for ev in kvm_exit kvm_pio kvm_msr kvm_userspace_exit kvm_mmio; do
                echo "== $ev"
                cat "$T/$ev/hist"
            done >"$KAPSEL_OUT/$vmm-$i.exits"
        fi
        wait
        set_triggers -
        echo "$vmm run $i: $(tail -n1 "$KAPSEL_OUT/$vmm-$i.measure")"
    done
done
JOB
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
scripts/testbed/run.sh --kapsel target/release/kapsel --bin target/bench/measure \
    --bin "$(command -v qemu-system-x86_64)" --qemu-data --env "RUNS=$RUNS" --env "VMMS=$VMMS" \
    --env "EXTRA=$EXTRA" --env "DIAG_TRACE=${DIAG_TRACE:-1}" --add target/bench/diag-initrd.cpio \
    --out "$out" --timeout 3600 -- "$job"
echo "host load average (1/5/15 min): $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after" |
    tee "$out/load"
python3 bench/diag/report.py "$out"
rm -f "$job"
[ -n "${BENCH_OUT:-}" ] || rm -rf "$out"

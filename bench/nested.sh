#!/usr/bin/env bash
# bench/nested.sh — the boot benchmark for a real Linux guest, inside the
# nested testbed: Debian's cloud kernel with the busybox initramfs (prints
# its markers, powers off) booted N times each, all inside one outer VM, by
#
#   kapsel            `kapsel run`
#   microvm-rtc       QEMU -M microvm,rtc=on: the peer figure, QEMU's
#                     fastest configuration for this Linux guest
#   microvm-nortc     QEMU -M microvm: under KVM microvm leaves its RTC out
#                     by default (rtc=auto); slower for this guest, it is
#                     what this benchmark compared against before 2026-12-07
#   q35-seabios       QEMU -M q35, SeaBIOS (bios-256k.bin, QEMU's default
#                     x86 firmware), -kernel through linuxboot_dma.bin
#   q35-qboot         QEMU -M q35 -bios qboot.rom: QEMU's minimal firmware,
#                     its fastest path for direct kernel boot on q35
#
# with the same kernel, initrd, command line, memory and vCPU count, and
# -nodefaults -no-user-config, the serial console on stdio for every QEMU.
# Runs alternate: one run of each VMM per round, the order rotated by one
# every round. Each run has a 300 s limit; a VMM whose run fails (no
# KAPSEL-GUEST-UP, non-zero exit, time limit) is not run again and is
# reported as failed.
# Prints per-VMM medians and min–max of wall time, medians of CPU time and
# peak RSS, and the ratios Kapsel/each peer. Slow by nature (the outer VM is
# emulated): about ten minutes for 5 runs each.
#
# "guest s" is the guest kernel's own clock when it powers off (the
# printk timestamp of "reboot: Power down", printed even with `quiet`):
# from the kernel's clock start, after decompression, to power-off. Wall
# minus guest is what lies outside it: exec of the VMM, firmware, loading
# the kernel and initrd, decompression, teardown.
#
# Usage: bench/nested.sh [RUNS]   (default 5 runs each)
#        bench/nested.sh --report DIR RUNS   (the summary of a kept run)
# BENCH_OUT=DIR keeps the consoles and measurements there (default: a
# temporary directory, removed afterwards). BENCH_VMMS="kapsel microvm-rtc"
# runs only those (more rounds of the peer pair in the same time).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VMMS=${BENCH_VMMS:-kapsel microvm-rtc microvm-nortc q35-seabios q35-qboot}

summary() { # OUT_DIR RUNS
    python3 - "$1" "$2" "$VMMS" <<'PY'
import re, statistics, sys
out, runs, vmms = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
res, failed = {}, []
for vmm in vmms:
    rows = []
    for i in range(1, runs + 1):
        try:
            text = open(f"{out}/{vmm}-{i}.measure").read()
            log = open(f"{out}/{vmm}-{i}.log", errors="replace").read()
        except OSError:
            text = log = ""
        m = re.search(r"wall_us=(\d+) user_us=(\d+) sys_us=(\d+) maxrss_kib=(\d+) status=(\d+)", text)
        if not m or m.group(5) != "0" or "KAPSEL-GUEST-UP" not in log:
            failed.append(f"{vmm}: run {i} failed (see {out}/{vmm}-{i}.log, .measure): {text.strip()}")
            rows = None
            break
        wall, user, sys_, rss = (int(m.group(k)) for k in (1, 2, 3, 4))
        g = re.findall(r"\[\s*(\d+\.\d+)\] reboot: Power down", log)
        guest = float(g[-1]) if g else float("nan")
        rows.append((wall / 1e6, (user + sys_) / 1e6, rss / 1024, guest))
    if rows is None:
        continue
    walls = [r[0] for r in rows]
    res[vmm] = (statistics.median(walls), min(walls), max(walls),
                statistics.median(r[1] for r in rows), statistics.median(r[2] for r in rows),
                statistics.median(r[3] for r in rows), statistics.median(r[0] - r[3] for r in rows))
kernel = open(f"{out}/l1-kernel").read().strip()
print(f"nested boot benchmark (Linux guest in the testbed, L1 kernel {kernel}), "
      f"{runs} runs each, alternating, 256M, 1 vCPU")
print(f"{'':14} {'wall s (median)':>15} {'min–max':>13} {'CPU s':>7} {'peak RSS MiB':>13}"
      f" {'guest s':>8} {'wall-guest s':>13}")
for vmm, (w, lo, hi, cpu, rss, guest, outside) in res.items():
    print(f"{vmm:14} {w:15.2f} {lo:6.2f}–{hi:<6.2f} {cpu:7.2f} {rss:13.2f} {guest:8.2f} {outside:13.2f}")
for f in failed:
    print(f"FAILED {f}")
if "kapsel" not in res:
    sys.exit("bench: kapsel failed, no ratios")
k = res["kapsel"]
for vmm, (w, _, _, cpu, rss, guest, _) in res.items():
    if vmm != "kapsel":
        print(f"ratio kapsel/{vmm:14} wall {k[0] / w:.2f}x, CPU {k[3] / cpu:.2f}x, "
              f"peak RSS {k[4] / rss:.2f}x, guest {k[5] / guest:.2f}x")
PY
}

if [ "${1:-}" = --report ]; then
    [ $# = 3 ] || { echo "usage: bench/nested.sh --report DIR RUNS" >&2; exit 2; }
    summary "$2" "$3"
    exit
fi
RUNS=${1:-5}
cargo build --release -q -p kapsel
mkdir -p target/bench
gcc -O2 -static -o target/bench/measure bench/measure.c
out=${BENCH_OUT:-$(mktemp -d)}
mkdir -p "$out"
job=$(mktemp)
cat >"$job" <<'JOB'
#!/bin/sh
CMDLINE="console=ttyS0 quiet mitigations=off"
uname -r >"$KAPSEL_OUT/l1-kernel"
cat /proc/cpuinfo | grep -m1 "model name" >"$KAPSEL_OUT/l1-cpu"
set -- $VMMS
n=$#
failed=""
for i in $(seq "$RUNS"); do
    # Rotate the order by one per round so that no VMM always runs first.
    order=""
    k=0
    for vmm in $VMMS; do
        idx=$(( (k + i - 1) % n + 1 ))
        eval "order=\"\$order \${$idx}\""
        k=$((k + 1))
    done
    for vmm in $order; do
        case " $failed " in *" $vmm "*) continue ;; esac
        # The common QEMU part: KVM, the host CPU, the same memory, vCPUs,
        # kernel, initrd and command line, nothing QEMU would add by default.
        q="qemu-system-x86_64 -L /mnt/share/qemu -enable-kvm -cpu host -m 256M -smp 1
           -nodefaults -no-user-config -nographic -no-reboot -serial stdio"
        case $vmm in
        kapsel) cmd="$KAPSEL run --memory 256M --cpus 1 --console stdio" ;;
        microvm-rtc) cmd="$q -M microvm,rtc=on" ;;
        microvm-nortc) cmd="$q -M microvm" ;;
        q35-seabios) cmd="$q -M q35 -bios /mnt/share/seabios/bios-256k.bin" ;;
        q35-qboot) cmd="$q -M q35 -bios /mnt/share/qemu/qboot.rom" ;;
        esac
        if [ $vmm = kapsel ]; then
            files="--kernel $KAPSEL_L2_KERNEL --initrd $KAPSEL_L2_INITRD --cmdline"
        else
            files="-kernel $KAPSEL_L2_KERNEL -initrd $KAPSEL_L2_INITRD -append"
        fi
        # shellcheck disable=SC2086 # word splitting of $cmd and $files intended
        measure timeout -s KILL 300 $cmd $files "$CMDLINE" </dev/null \
            >"$KAPSEL_OUT/$vmm-$i.log" 2>"$KAPSEL_OUT/$vmm-$i.measure"
        echo "$vmm run $i: $(tail -n1 "$KAPSEL_OUT/$vmm-$i.measure")"
        if ! grep -q KAPSEL-GUEST-UP "$KAPSEL_OUT/$vmm-$i.log" ||
            ! grep -q "status=0" "$KAPSEL_OUT/$vmm-$i.measure"; then
            echo "BENCH-FAILED $vmm run $i"
            failed="$failed $vmm"
        fi
    done
done
JOB
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
scripts/testbed/run.sh --kapsel target/release/kapsel --bin target/bench/measure \
    --bin "$(command -v qemu-system-x86_64)" --qemu-data --env "RUNS=$RUNS" --env "VMMS=$VMMS" \
    --out "$out" --timeout 14400 -- "$job"
echo "host load average (1/5/15 min): $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after"
summary "$out" "$RUNS"
rm -f "$job"
[ -n "${BENCH_OUT:-}" ] || rm -rf "$out"

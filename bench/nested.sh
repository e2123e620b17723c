#!/usr/bin/env bash
# bench/nested.sh — the boot benchmark for a real Linux guest, inside the
# nested testbed: Debian's cloud kernel with the busybox initramfs (prints
# its markers, powers off) booted N times each by `kapsel run` and by Debian's
# QEMU (-M microvm, the same kernel, initrd, command line, memory and vCPUs),
# alternating, all inside one outer VM. Prints medians and ratios of wall time
# and peak RSS. Slow by nature (the outer VM is emulated): minutes.
#
# Usage: bench/nested.sh [RUNS]   (default 3 runs each)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${1:-3}
cargo build --release -q -p kapsel
mkdir -p target/bench
gcc -O2 -static -o target/bench/measure bench/measure.c
out=$(mktemp -d)
job=$(mktemp)
cat >"$job" <<'JOB'
#!/bin/sh
CMDLINE="console=ttyS0 quiet mitigations=off"
for i in $(seq "$RUNS"); do
    for vmm in kapsel qemu; do
        if [ $vmm = kapsel ]; then
            set -- "$KAPSEL" run --kernel "$KAPSEL_L2_KERNEL" --initrd "$KAPSEL_L2_INITRD" \
                --memory 256M --cpus 1 --console stdio --cmdline "$CMDLINE"
        else
            set -- qemu-system-x86_64 -L /mnt/share/qemu -enable-kvm -cpu host -M microvm -m 256M -smp 1 \
                -nodefaults -no-user-config -nographic -no-reboot -serial stdio \
                -kernel "$KAPSEL_L2_KERNEL" -initrd "$KAPSEL_L2_INITRD" -append "$CMDLINE"
        fi
        measure "$@" </dev/null >"$KAPSEL_OUT/$vmm-$i.log" 2>"$KAPSEL_OUT/$vmm-$i.measure"
        grep -q KAPSEL-GUEST-UP "$KAPSEL_OUT/$vmm-$i.log" || echo "BENCH-FAILED $vmm run $i"
        echo "$vmm run $i: $(tail -n1 "$KAPSEL_OUT/$vmm-$i.measure")"
    done
done
JOB
scripts/testbed/run.sh --kapsel target/release/kapsel --bin target/bench/measure \
    --bin "$(command -v qemu-system-x86_64)" --qemu-data --env "RUNS=$RUNS" \
    --out "$out" --timeout 3600 -- "$job"
python3 - "$out" "$RUNS" <<'PY'
import re, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
res = {}
for vmm in ("kapsel", "qemu"):
    rows = []
    for i in range(1, runs + 1):
        text = open(f"{out}/{vmm}-{i}.measure").read()
        m = re.search(r"wall_us=(\d+) user_us=(\d+) sys_us=(\d+) maxrss_kib=(\d+) status=(\d+)", text)
        if not m or m.group(5) != "0":
            sys.exit(f"bench: {vmm} run {i} failed: {text}")
        rows.append((int(m.group(1)) / 1e6, int(m.group(4)) / 1024))
    res[vmm] = (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows))
print(f"nested boot benchmark (Linux guest in the testbed), {runs} runs each, 256M, 1 vCPU")
print(f"{'':8} {'wall s':>8} {'peak RSS MiB':>13}")
for vmm, (w, r) in res.items():
    print(f"{vmm:8} {w:8.2f} {r:13.2f}")
print(f"ratio kapsel/qemu: wall {res['kapsel'][0] / res['qemu'][0]:.2f}x, peak RSS {res['kapsel'][1] / res['qemu'][1]:.2f}x")
PY
rm -rf "$out" "$job"

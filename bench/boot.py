#!/usr/bin/env python3
"""Boot benchmark: Kapsel vs QEMU microvm on the same tiny PVH guest.

Boots kapsel-testguest's `hello` guest (prints one line, powers off through
ACPI) under `kapsel run` and under `qemu-system-x86_64 -M microvm`
(microvm's default under KVM leaves its RTC out; this guest never reads
the clock, so `rtc=on`, bench/nested.sh's peer, makes no difference here),
alternating, N runs each, and prints medians and ratios of wall time
(exec to exit), CPU time and peak RSS. Kapsel's RSS overhead is its peak
RSS minus the guest memory resident at exit (which Kapsel logs). Kapsel
also runs with `--no-sandbox` in the same rounds: the difference is what
its sandbox (mount namespace, capabilities, seccomp filters) costs.

Usage: bench/boot.py [--runs N] [--memory 64M]
Needs: cargo, gcc, qemu-system-x86_64 (Debian: qemu-system-x86), /dev/kvm.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "kapsel"], cwd=ROOT, check=True)
    out = subprocess.run(
        ["cargo", "build", "--release", "-q", "-p", "kapsel-testguest", "--message-format=json"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout
    guest = None
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "build-script-executed" and "kapsel-testguest" in msg["package_id"]:
            guest = os.path.join(msg["out_dir"], "hello.elf")
    if not guest or not os.path.exists(guest):
        sys.exit("bench: cannot find the hello test guest")
    measure = os.path.join(ROOT, "target", "bench", "measure")
    os.makedirs(os.path.dirname(measure), exist_ok=True)
    subprocess.run(["gcc", "-O2", "-static", "-o", measure,
                    os.path.join(ROOT, "bench", "measure.c")], check=True)
    return os.path.join(ROOT, "target", "release", "kapsel"), guest, measure


def run(measure, cmd, env=None):
    p = subprocess.run([measure] + cmd, capture_output=True, text=True, env=env,
                       stdin=subprocess.DEVNULL)
    m = re.search(r"wall_us=(\d+) user_us=(\d+) sys_us=(\d+) maxrss_kib=(\d+) status=(\d+)", p.stderr)
    if not m:
        sys.exit(f"bench: no measurement from {cmd[0]}: {p.stderr}")
    wall, user, sys_, rss, status = map(int, m.groups())
    if status != 0:
        sys.exit(f"bench: {' '.join(cmd)} exited {status}: {p.stdout}{p.stderr}")
    resident = re.search(r"guest memory resident at exit: (\d+) KiB", p.stderr)
    return {"wall_ms": wall / 1000, "cpu_ms": (user + sys_) / 1000, "rss_mib": rss / 1024,
            "guest_mib": int(resident.group(1)) / 1024 if resident else None,
            "stdout": p.stdout}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--memory", default="64M")
    args = ap.parse_args()
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        sys.exit("bench: qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    kapsel, guest, measure = build()
    env = dict(os.environ, KAPSEL_LOG="info")
    kapsel_cmd = [kapsel, "run", "--kernel", guest, "--memory", args.memory, "--console", "stdio"]
    qemu_cmd = [qemu, "-enable-kvm", "-M", "microvm", "-m", args.memory, "-nodefaults",
                "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", guest]
    bare_cmd = kapsel_cmd + ["--no-sandbox"]
    results = {"kapsel": [], "no-sandbox": [], "qemu": []}
    for i in range(args.runs):
        for name, cmd in (("kapsel", kapsel_cmd), ("no-sandbox", bare_cmd), ("qemu", qemu_cmd)):
            r = run(measure, cmd, env if name != "qemu" else None)
            if "hello from PVH guest" not in r["stdout"]:
                sys.exit(f"bench: {name} did not boot the guest: {r['stdout']!r}")
            results[name].append(r)

    def med(name, key):
        return statistics.median(r[key] for r in results[name])

    print(f"boot benchmark: {args.runs} runs each, alternating, guest {os.path.basename(guest)}, "
          f"memory {args.memory}")
    print(f"{'':10} {'wall ms':>9} {'CPU ms':>9} {'peak RSS MiB':>13}")
    for name in ("kapsel", "no-sandbox", "qemu"):
        print(f"{name:10} {med(name, 'wall_ms'):9.1f} {med(name, 'cpu_ms'):9.1f} {med(name, 'rss_mib'):13.2f}")
    guest_mib = med("kapsel", "guest_mib")
    overhead = statistics.median(r["rss_mib"] - r["guest_mib"] for r in results["kapsel"])
    print(f"ratio kapsel/qemu: wall {med('kapsel', 'wall_ms') / med('qemu', 'wall_ms'):.2f}x, "
          f"CPU {med('kapsel', 'cpu_ms') / med('qemu', 'cpu_ms'):.2f}x, "
          f"peak RSS {med('kapsel', 'rss_mib') / med('qemu', 'rss_mib'):.2f}x")
    print(f"sandbox cost (kapsel - kapsel --no-sandbox, medians): "
          f"wall {med('kapsel', 'wall_ms') - med('no-sandbox', 'wall_ms'):+.1f} ms, "
          f"CPU {med('kapsel', 'cpu_ms') - med('no-sandbox', 'cpu_ms'):+.1f} ms, "
          f"peak RSS {med('kapsel', 'rss_mib') - med('no-sandbox', 'rss_mib'):+.2f} MiB")
    print(f"kapsel RSS overhead (peak RSS - guest memory resident {guest_mib:.2f} MiB): {overhead:.2f} MiB "
          f"(target <= 5 MiB)")


if __name__ == "__main__":
    main()

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

`--compare PATH` adds another kapsel binary (say, a build of the commit
before a change) to the same rounds, for before/after figures measured
side by side.

After the rounds, one `idle` guest (it waits in `hlt`) is started under
Kapsel and its VM process's resident memory is broken down from
/proc/PID/smaps: guest RAM, the kapsel binary's file pages, shared
libraries, its own anonymous memory (heap, malloc arenas, thread stacks),
what is private to the process and what it shares with every other process
mapping the same files.

Usage: bench/boot.py [--runs N] [--memory 64M] [--compare PATH]
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
import time

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


def breakdown(kapsel, guest_dir, memory, env):
    """Resident memory of an idle VM process, by kind, in KiB."""
    idle = os.path.join(guest_dir, "idle.elf")
    vm = subprocess.Popen([kapsel, "run", "--kernel", idle, "--memory", memory, "--console",
                           "stdio"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        line = vm.stdout.readline()
        if "idle ready" not in line:
            return None
        time.sleep(0.2)
        # Per mapping: its kind and its counters; guest RAM is the
        # anonymous memory advised for (MADV_HUGEPAGE, "hg") or against
        # (MADV_NOHUGEPAGE, "nh") huge pages: the VMM advises nothing else.
        maps = []
        with open(f"/proc/{vm.pid}/smaps") as f:
            for ln in f:
                parts = ln.split()
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", ln):
                    path = parts[5] if len(parts) > 5 else ""
                    if path == kapsel or path.endswith("/kapsel"):
                        name = {"r-xp": "  binary: code", "r--p": "  binary: read-only"}.get(
                            parts[1], "  binary: data")
                    elif path.startswith("/"):
                        name = "shared libraries (file)"
                    elif path.startswith("anon_inode:"):
                        name = "KVM vCPU pages"
                    else:
                        name = "anonymous"
                    maps.append([name, {}])
                elif parts[0] == "VmFlags:":
                    if maps[-1][0] == "anonymous" and ("hg" in parts or "nh" in parts):
                        maps[-1][0] = "guest RAM"
                elif parts[0] in ("Rss:", "Private_Clean:", "Private_Dirty:", "Pss:",
                                  "AnonHugePages:"):
                    maps[-1][1][parts[0][:-1]] = int(parts[1])
        kinds, total = {}, {}
        for name, counters in maps:
            if name.startswith("  binary"):
                k = kinds.setdefault("kapsel binary (file)", {})
                for key, kib in counters.items():
                    k[key] = k.get(key, 0) + kib
            k = kinds.setdefault(name, {})
            for key, kib in counters.items():
                k[key] = k.get(key, 0) + kib
                total[key] = total.get(key, 0) + kib
        with open(f"/proc/{vm.pid}/status") as f:
            threads = re.search(r"Threads:\s+(\d+)", f.read()).group(1)
        return kinds, total, threads
    finally:
        vm.kill()
        vm.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--memory", default="64M")
    ap.add_argument("--compare", help="another kapsel binary to run in the same rounds")
    args = ap.parse_args()
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        sys.exit("bench: qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    kapsel, guest, measure = build()
    env = dict(os.environ, KAPSEL_LOG="info")
    load0 = os.getloadavg()

    def kcmd(binary):
        return [binary, "run", "--kernel", guest, "--memory", args.memory, "--console", "stdio"]

    kapsel_cmd = kcmd(kapsel)
    qemu_cmd = [qemu, "-enable-kvm", "-M", "microvm", "-m", args.memory, "-nodefaults",
                "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", guest]
    bare_cmd = kapsel_cmd + ["--no-sandbox"]
    variants = [("kapsel", kapsel_cmd), ("no-sandbox", bare_cmd), ("qemu", qemu_cmd)]
    if args.compare:
        variants.insert(2, ("compare", kcmd(os.path.abspath(args.compare))))
    results = {name: [] for name, _ in variants}
    for i in range(args.runs):
        # The order rotates every round, so that no VMM always runs after
        # the same one.
        k = i % len(variants)
        for name, cmd in variants[k:] + variants[:k]:
            r = run(measure, cmd, env if name != "qemu" else None)
            if "hello from PVH guest" not in r["stdout"]:
                sys.exit(f"bench: {name} did not boot the guest: {r['stdout']!r}")
            results[name].append(r)
    load1 = os.getloadavg()

    def med(name, key):
        return statistics.median(r[key] for r in results[name])

    def spread(name, key):
        xs = [r[key] for r in results[name]]
        return f"{min(xs):.1f}-{max(xs):.1f}"

    print(f"boot benchmark {time.strftime('%Y-%m-%d %H:%M')}: {args.runs} runs each, alternating "
          f"(order rotated each round), guest {os.path.basename(guest)}, memory {args.memory}")
    print(f"load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
          f"after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if args.compare:
        print(f"compare = {os.path.abspath(args.compare)}")
    print(f"{'':10} {'wall ms':>9} {'min-max':>13} {'CPU ms':>9} {'peak RSS MiB':>13} "
          f"{'guest MiB':>10} {'overhead MiB':>13}")
    for name, _ in variants:
        g = (f"{med(name, 'guest_mib'):10.2f}" if results[name][0]["guest_mib"] is not None
             else f"{'':10}")
        o = (f"{statistics.median(r['rss_mib'] - r['guest_mib'] for r in results[name]):13.2f}"
             if results[name][0]["guest_mib"] is not None else "")
        print(f"{name:10} {med(name, 'wall_ms'):9.1f} {spread(name, 'wall_ms'):>13} "
              f"{med(name, 'cpu_ms'):9.1f} {med(name, 'rss_mib'):13.2f} {g} {o}")
    print(f"ratio kapsel/qemu: wall {med('kapsel', 'wall_ms') / med('qemu', 'wall_ms'):.2f}x "
          f"(target <= 0.35x), CPU {med('kapsel', 'cpu_ms') / med('qemu', 'cpu_ms'):.2f}x, "
          f"peak RSS {med('kapsel', 'rss_mib') / med('qemu', 'rss_mib'):.2f}x")
    if args.compare:
        print(f"ratio compare/qemu: wall {med('compare', 'wall_ms') / med('qemu', 'wall_ms'):.2f}x")
    print(f"sandbox cost (kapsel - kapsel --no-sandbox, medians): "
          f"wall {med('kapsel', 'wall_ms') - med('no-sandbox', 'wall_ms'):+.1f} ms, "
          f"CPU {med('kapsel', 'cpu_ms') - med('no-sandbox', 'cpu_ms'):+.1f} ms, "
          f"peak RSS {med('kapsel', 'rss_mib') - med('no-sandbox', 'rss_mib'):+.2f} MiB")
    overhead = statistics.median(r["rss_mib"] - r["guest_mib"] for r in results["kapsel"])
    print(f"kapsel RSS overhead (peak RSS - guest memory resident "
          f"{med('kapsel', 'guest_mib'):.2f} MiB): {overhead:.2f} MiB (target <= 3 MiB)")
    binaries = [("kapsel", kapsel)] + ([("compare", os.path.abspath(args.compare))]
                                       if args.compare else [])
    for label, binary in binaries:
        b = breakdown(binary, os.path.dirname(guest), args.memory, env)
        if not b:
            print(f"{label}: the idle guest did not come up; no breakdown")
            continue
        kinds, total, threads = b
        print(f"{label}: resident memory of an idle VM process ({threads} threads), KiB:")
        print(f"  {'':26} {'RSS':>7} {'PSS':>7} {'private':>8} {'dirty':>7} {'in THP':>7}")
        for name in ("guest RAM", "kapsel binary (file)", "  binary: code",
                     "  binary: read-only", "  binary: data", "shared libraries (file)",
                     "anonymous", "KVM vCPU pages"):
            k = kinds.get(name)
            if k:
                k.setdefault("AnonHugePages", 0)
                print(f"  {name:26} {k['Rss']:7} {k['Pss']:7} "
                      f"{k['Private_Clean'] + k['Private_Dirty']:8} {k['Private_Dirty']:7} "
                      f"{k['AnonHugePages']:7}")
        g = kinds.get("guest RAM", {"Rss": 0, "Pss": 0, "Private_Clean": 0, "Private_Dirty": 0})
        private = (total["Private_Clean"] + total["Private_Dirty"] - g["Private_Clean"]
                   - g["Private_Dirty"])
        print(f"  {'all but guest RAM':26} {total['Rss'] - g['Rss']:7} "
              f"{total['Pss'] - g['Pss']:7} {private:8} "
              f"{total['Private_Dirty'] - g['Private_Dirty']:7}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Daemon benchmark: 50 VMs started through kapseld, and stopped again,
side by side with the same 50 guests under QEMU.

Every VM runs kapsel-testguest's `idle` guest (prints "idle ready", then
waits in hlt with interrupts on, powers off on the ACPI power button).

Kapsel: a release `kapsel daemon` with a vm.conf of N disabled VMs; the
clock runs from the first `kapsel start` until every guest's console (read
through the daemon's socket, as `kapsel console` does) shows "idle ready".
Then RSS: each VM process's VmRSS (guest pages it touched included, so an
upper bound of the VMM's overhead), each guest's monitor process's RSS and
the daemon's growth per VM. Then adoption: `kill -9` of the daemon, a new
daemon on the same state directory, the clock running until its status
lists all N running with the same pids. Then `kapsel stop -a -w`: the power
button of all N, until all have powered off.

QEMU: the same N guests as `qemu-system-x86_64 -M microvm -enable-kvm`
processes started directly (no manager), serial to a file each; the clock
runs until every file shows "idle ready"; stopping is SIGTERM to each.

With --containers N it also starts N busybox containers (init: a shell
that sleeps) through the same daemon and reports the daemon's RSS growth
per running container and each container's monitor RSS.

Usage: bench/daemon.py [--vms N] [--memory 64M] [--containers N]
Needs: root or /dev/kvm access, cargo, gcc, qemu-system-x86_64.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import container as container_bench  # noqa: E402  (its busybox root builder)
READY = b"idle ready"


def build():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "kapsel"], cwd=ROOT, check=True)
    out = subprocess.run(
        ["cargo", "build", "--release", "-q", "-p", "kapsel-testguest", "--message-format=json"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "build-script-executed" and "kapsel-testguest" in msg["package_id"]:
            guest = os.path.join(msg["out_dir"], "idle.elf")
            if os.path.exists(guest):
                return os.path.join(ROOT, "target", "release", "kapsel"), guest
    sys.exit("bench: cannot find the idle test guest")


def parse_kib(size):
    units = {"K": 1, "M": 1024, "G": 1024 * 1024}
    return int(size[:-1]) * units[size[-1].upper()] if size[-1].upper() in units else int(size) // 1024


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def guest_ram_kib(pid, memory_kib):
    """Resident KiB of the guest-RAM mappings (anonymous, at least the
    guest's memory size) of a VM process, from /proc/PID/smaps."""
    total, size, anon_map = 0, 0, False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                parts = line.split()
                if "-" in parts[0] and len(parts[0]) > 8 and ":" not in parts[0]:
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    size = (hi - lo) // 1024
                    anon_map = len(parts) < 6
                elif parts[0] == "Rss:" and anon_map and size >= memory_kib:
                    total += int(parts[1])
    except OSError:
        pass
    return total


def frame(obj):
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def read_frame(s):
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            raise EOFError
        head += chunk
    (n,) = struct.unpack(">I", head)
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            raise EOFError
        body += chunk
    return json.loads(body)


def request(sock_path, req):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    s.sendall(frame({"version": 1, "request": req}))
    reply = read_frame(s)
    return s, reply


def console_shows(sock_path, name, want, timeout):
    s, reply = request(sock_path, {"kind": "console", "target": name})
    if reply.get("kind") != "ok":
        raise RuntimeError(f"console {name}: {reply}")
    s.settimeout(timeout)
    seen = b""
    try:
        while want not in seen:
            chunk = s.recv(4096)
            if not chunk:
                break
            seen += chunk
    except socket.timeout:
        pass
    s.close()
    return want in seen


def start_daemon(kapsel, tmp, tag, conf_text, shutdown_timeout, wait=True):
    """A release kapsel daemon on a vm.conf of `conf_text`; returns the
    process, its socket and an environment for the verbs."""
    conf = os.path.join(tmp, f"{tag}.conf")
    with open(conf, "w") as f:
        f.write(conf_text)
    sock = os.path.join(tmp, f"{tag}.sock")
    daemon = subprocess.Popen([kapsel, "daemon", "-f", conf, "--socket", sock,
                               "--state-dir", os.path.join(tmp, f"{tag}-state"),
                               "--shutdown-timeout", str(shutdown_timeout)],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, f"{tag}.log"), "w"))
    while wait and not os.path.exists(sock):
        time.sleep(0.01)
    if wait:
        time.sleep(0.1)
    return daemon, sock, dict(os.environ, KAPSEL_SOCKET=sock)


def start_all(kapsel, env, sock, names, marker):
    """`kapsel start` for each name, one after another, then waits until
    each console shows `marker`; returns (seconds for the starts, seconds
    until all were ready)."""
    t0 = time.monotonic()
    for name in names:
        subprocess.run([kapsel, "start", name], env=env, check=True, stdout=subprocess.DEVNULL)
    t_started = time.monotonic() - t0
    for name in names:
        if not console_shows(sock, name, marker, 30):
            sys.exit(f"bench: {name} never printed {marker!r}")
    return t_started, time.monotonic() - t0


def monitor_pids():
    """{guest name: pid} of the running `kapsel monitor NAME` processes."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if len(args) >= 3 and args[1] == b"monitor":
            found[args[2].decode()] = int(entry)
    return found


def adopt(kapsel, tmp, tag, conf_text, daemon, sock, pids):
    """kill -9 of `daemon`, a new daemon on the same state directory;
    returns it and the seconds until its status lists `pids` running."""
    daemon.kill()
    daemon.wait()
    os.unlink(sock)
    t0 = time.monotonic()
    daemon, sock, env = start_daemon(kapsel, tmp, tag, conf_text, 10, wait=False)
    while True:
        try:
            _, reply = request(sock, {"kind": "status", "target": None})
            now = sorted(v["pid"] for v in reply["vms"] if v["state"] == "running")
            if now == sorted(pids):
                return daemon, sock, env, time.monotonic() - t0
        except (OSError, EOFError):
            pass
        if time.monotonic() - t0 > 30:
            sys.exit("bench: the new daemon did not adopt the guests")
        time.sleep(0.002)


def stop_daemon(daemon):
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=30)


def bench_kapsel(kapsel, guest, n, memory, tmp):
    conf = "".join(f'vm "b{i}" {{\n\tboot "{guest}"\n\tmemory {memory}\n\tdisable\n}}\n'
                   for i in range(n))
    daemon, sock, env = start_daemon(kapsel, tmp, "vm", conf, 10)
    daemon_rss0 = rss_kib(daemon.pid)
    t_started, t_ready = start_all(kapsel, env, sock, [f"b{i}" for i in range(n)], READY)
    time.sleep(0.5)
    _, reply = request(sock, {"kind": "status", "target": None})
    pids = [v["pid"] for v in reply["vms"] if v["pid"]]
    if len(pids) != n:
        sys.exit(f"bench: {len(pids)} of {n} VMs running")
    rss = [rss_kib(p) for p in pids]
    mem_kib = parse_kib(memory)
    overhead = [rss_kib(p) - guest_ram_kib(p, mem_kib) for p in pids]
    daemon_rss = rss_kib(daemon.pid)
    monitors = monitor_pids()
    monitor_rss = [rss_kib(monitors[f"b{i}"]) for i in range(n)]
    daemon, sock, env, t_adopt = adopt(kapsel, tmp, "vm", conf, daemon, sock, pids)
    t1 = time.monotonic()
    subprocess.run([kapsel, "stop", "-a", "-w"], env=env, check=True, stdout=subprocess.DEVNULL)
    t_stop = time.monotonic() - t1
    stop_daemon(daemon)
    return {
        "adopt_s": t_adopt, "monitor_rss_median_kib": statistics.median(monitor_rss),
        "start_cmds_s": t_started, "all_ready_s": t_ready, "stop_all_s": t_stop,
        "vm_rss_median_kib": statistics.median(rss), "vm_rss_max_kib": max(rss),
        "vm_overhead_median_kib": statistics.median(overhead), "vm_overhead_max_kib": max(overhead),
        "daemon_rss_kib": daemon_rss, "daemon_per_vm_kib": (daemon_rss - daemon_rss0) / n,
    }


def bench_qemu(guest, n, memory, tmp):
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        return None
    procs, logs = [], []
    t0 = time.monotonic()
    for i in range(n):
        log = os.path.join(tmp, f"q{i}.log")
        logs.append(log)
        procs.append(subprocess.Popen(
            [qemu, "-M", "microvm", "-enable-kvm", "-m", memory,
             "-nodefaults", "-no-user-config", "-display", "none", "-kernel", guest,
             "-serial", f"file:{log}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    pending = set(range(n))
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for i in list(pending):
            try:
                with open(logs[i], "rb") as f:
                    if READY in f.read():
                        pending.discard(i)
            except OSError:
                pass
        time.sleep(0.005)
    t_ready = time.monotonic() - t0
    if pending:
        for p in procs:
            p.kill()
        return {"error": f"{len(pending)} QEMU guests never printed 'idle ready'"}
    time.sleep(0.5)
    rss = [rss_kib(p.pid) for p in procs]
    overhead = [rss_kib(p.pid) - guest_ram_kib(p.pid, parse_kib(memory)) for p in procs]
    t1 = time.monotonic()
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait()
    t_stop = time.monotonic() - t1
    return {"all_ready_s": t_ready, "stop_all_s": t_stop,
            "vm_rss_median_kib": statistics.median(rss), "vm_rss_max_kib": max(rss),
            "vm_overhead_median_kib": statistics.median(overhead)}


def bench_containers(kapsel, n, tmp):
    root = container_bench.busybox_root(tmp)
    conf = "".join(f'container "kbench{i}" {{\n\troot "{root}"\n'
                   f'\tinit "/bin/sh" "-c" "echo ct-ready; exec sleep 1000"\n\tdisable\n}}\n'
                   for i in range(n))
    daemon, sock, env = start_daemon(kapsel, tmp, "ct", conf, 5)
    rss0 = rss_kib(daemon.pid)
    _, t_ready = start_all(kapsel, env, sock, [f"kbench{i}" for i in range(n)], b"ct-ready")
    time.sleep(0.5)
    rss1 = rss_kib(daemon.pid)
    monitors = monitor_pids()
    monitor_rss = [rss_kib(monitors[f"kbench{i}"]) for i in range(n)]
    subprocess.run([kapsel, "stop", "-a", "-f", "-w"], env=env, check=True, stdout=subprocess.DEVNULL)
    stop_daemon(daemon)
    return {"ready_s": t_ready, "daemon_rss0_kib": rss0, "daemon_rss_kib": rss1,
            "per_ct_kib": (rss1 - rss0) / n, "monitor_rss_median_kib": statistics.median(monitor_rss)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vms", type=int, default=50)
    ap.add_argument("--memory", default="64M")
    ap.add_argument("--containers", type=int, default=0)
    args = ap.parse_args()
    kapsel, guest = build()
    tmp = tempfile.mkdtemp(prefix="kapsel-bench-daemon-")
    try:
        k = bench_kapsel(kapsel, guest, args.vms, args.memory, tmp)
        q = bench_qemu(guest, args.vms, args.memory, tmp)
        c = bench_containers(kapsel, args.containers, tmp) if args.containers else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = args.vms
    print(f"{n} VMs, idle guest, {args.memory} each")
    print(f"kapsel: {n} x `kapsel start` took {k['start_cmds_s']:.2f} s; all guests ready after {k['all_ready_s']:.2f} s")
    print(f"kapsel: VM process RSS median {k['vm_rss_median_kib'] / 1024:.2f} MiB, max {k['vm_rss_max_kib'] / 1024:.2f} MiB; "
          f"without guest RAM (VMM overhead) median {k['vm_overhead_median_kib'] / 1024:.2f} MiB, max {k['vm_overhead_max_kib'] / 1024:.2f} MiB")
    print(f"kapsel: daemon RSS {k['daemon_rss_kib'] / 1024:.2f} MiB, {k['daemon_per_vm_kib']:.0f} KiB per VM; "
          f"each guest's monitor process RSS median {k['monitor_rss_median_kib'] / 1024:.2f} MiB")
    print(f"kapsel: kill -9 of the daemon, a new one adopted all {n} guests in {k['adopt_s'] * 1000:.0f} ms")
    print(f"kapsel: `kapsel stop -a -w` (power button, all powered off) took {k['stop_all_s']:.2f} s")
    if q is None:
        print("qemu: qemu-system-x86_64 not installed")
    elif "error" in q:
        print(f"qemu: {q['error']}")
    else:
        print(f"qemu:   all guests ready after {q['all_ready_s']:.2f} s (processes started directly, no manager)")
        print(f"qemu:   process RSS median {q['vm_rss_median_kib'] / 1024:.2f} MiB, max {q['vm_rss_max_kib'] / 1024:.2f} MiB; "
              f"without guest RAM median {q['vm_overhead_median_kib'] / 1024:.2f} MiB")
        print(f"qemu:   SIGTERM to all, exited after {q['stop_all_s']:.2f} s")
        print(f"ratio kapsel/qemu: ready {k['all_ready_s'] / q['all_ready_s']:.2f}x, "
              f"RSS {k['vm_rss_median_kib'] / q['vm_rss_median_kib']:.2f}x")
    if c:
        n = args.containers
        print(f"containers: {n} started through the daemon, all ready after {c['ready_s']:.2f} s")
        print(f"containers: daemon RSS {c['daemon_rss0_kib'] / 1024:.2f} -> {c['daemon_rss_kib'] / 1024:.2f} MiB, "
              f"{c['per_ct_kib']:.0f} KiB per running container; its monitor RSS median "
              f"{c['monitor_rss_median_kib'] / 1024:.2f} MiB")


if __name__ == "__main__":
    main()

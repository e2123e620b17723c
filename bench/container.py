#!/usr/bin/env python3
"""Container start-up benchmark: Kapsel vs runc (and crun where it runs).

One busybox root (from Debian's busybox-static) for all. Each run is a
whole container life, create -> start -> wait -> delete, of /bin/true, as
one command: `kapsel run-container --root ROOT -- /bin/true`,
`kapsel-oci run --bundle B ID` (Kapsel as an OCI runtime, on the same
bundle as runc) and `runc run --bundle B ID` (config.json from `runc spec`, adjusted to the
root, no terminal; runc deletes the container when it ends), alternating,
N runs each. Prints the medians and ratios of wall time (exec to exit) and
CPU time, and the memory overhead per running container: the RSS (and
PSS, private memory) of the process that stays with a running container
(`kapsel run-container` itself; `runc run` for runc) while it runs
`sleep`.

crun 1.8 refuses a host with cgroup v1 controllers and a cgroup2 mount
that has controllers of its own ("hybrid", as this project's machines): then,
unless --no-v1-view is given, the whole benchmark runs in a private mount
namespace without the cgroup2 mount (/sys/fs/cgroup/unified), so that all
three runtimes see the same cgroup v1 host and crun runs.

Usage: bench/container.py [--runs N] [--no-v1-view]
Needs: root, cargo, gcc, busybox-static, runc (crun optional).
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "kapsel", "-p", "kapsel-oci"],
                   cwd=ROOT, check=True)
    measure = os.path.join(ROOT, "target", "bench", "measure")
    os.makedirs(os.path.dirname(measure), exist_ok=True)
    subprocess.run(["gcc", "-O2", "-static", "-o", measure,
                    os.path.join(ROOT, "bench", "measure.c")], check=True)
    return (os.path.join(ROOT, "target", "release", "kapsel"),
            os.path.join(ROOT, "target", "release", "kapsel-oci"), measure)


def busybox_root(where):
    root = os.path.join(where, "rootfs")
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
    applets = subprocess.run(["/bin/busybox", "--list-full"], capture_output=True, text=True).stdout
    for applet in applets.split():
        link = os.path.join(root, applet)
        if applet != "bin/busybox" and not os.path.lexists(link):
            os.symlink("/bin/busybox", link)
    return root


def oci_bundle(where, rootfs, args):
    bundle = os.path.join(where, "bundle-" + args[0].strip("/").replace("/", "-"))
    os.makedirs(bundle)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = args
    cfg["root"] = {"path": rootfs, "readonly": False}
    with open(path, "w") as f:
        json.dump(cfg, f)
    return bundle


UNIFIED = "/sys/fs/cgroup/unified"


def hybrid():
    """cgroup v1 controllers plus a cgroup2 mount with controllers."""
    try:
        with open(os.path.join(UNIFIED, "cgroup.controllers")) as f:
            return bool(f.read().split())
    except OSError:
        return False


def enter_v1_view():
    """A private mount namespace for this process and its children in which
    the cgroup2 mount is gone: the host looks like a cgroup v1 host."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    clone_newns = 0x00020000
    if libc.unshare(clone_newns) != 0:
        sys.exit(f"bench: unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}")
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    subprocess.run(["umount", UNIFIED], check=True)


def run(measure, cmd):
    p = subprocess.run([measure] + cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    m = re.search(r"wall_us=(\d+) user_us=(\d+) sys_us=(\d+) maxrss_kib=(\d+) status=(\d+)", p.stderr)
    if not m:
        sys.exit(f"bench: no measurement from {cmd[0]}: {p.stderr}")
    wall, user, sys_, rss, status = map(int, m.groups())
    if status != 0:
        sys.exit(f"bench: {' '.join(cmd)} exited {status}: {p.stdout}{p.stderr}")
    return {"wall_ms": wall / 1000, "cpu_ms": (user + sys_) / 1000, "rss_mib": rss / 1024}


def smaps(pid):
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if v.strip().endswith("kB"):
                fields[k] = int(v.split()[0])
    return {"rss": fields["Rss"], "pss": fields["Pss"],
            "private": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
            "dirty": fields.get("Private_Dirty", 0)}


def monitor_memory(cmds, marker, stop=None):
    """Memory of the processes that supervise containers, all running at once.

    Started together, so that what they share (the binary's text, libc) is
    shared as it is on a host with many containers: PSS is then the fair
    share per container, private dirty what each one costs on its own."""
    procs = [subprocess.Popen(c, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for c in cmds]
    try:
        deadline = time.time() + 15
        while time.time() < deadline:
            running = subprocess.run(["pgrep", "-c", "-f", marker], capture_output=True, text=True).stdout
            if running.strip() and int(running) >= len(cmds):
                break
            time.sleep(0.05)
        else:
            sys.exit(f"bench: {cmds[0][0]} did not start its containers")
        time.sleep(0.3)
        return [smaps(p.pid) for p in procs]
    finally:
        if stop:
            stop()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--no-v1-view", action="store_true",
                    help="on a hybrid cgroup host, run as is (crun then refuses)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: containers need root")
    for tool in ("runc", "gcc", "pgrep"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found (scripts/setup.sh installs it)")
    kapsel, kapsel_oci, measure = build()
    view = "as the host has them"
    if hybrid() and shutil.which("crun") and not args.no_v1_view:
        enter_v1_view()
        view = f"v1 only (hybrid host; {UNIFIED} unmounted in a private mount namespace)"
    work = tempfile.mkdtemp(prefix="kapsel-bench-")
    try:
        rootfs = busybox_root(work)
        bundle = oci_bundle(work, rootfs, ["/bin/true"])
        peers = {
            "kapsel": lambda i: [kapsel, "run-container", "--root", rootfs, "--name", f"kb{i}",
                                 "--", "/bin/true"],
            "kapsel-oci": lambda i: [kapsel_oci, "--root", os.path.join(work, "oci-state"),
                                     "--log", os.path.join(work, "oci.log"),
                                     "run", "--bundle", bundle, f"ob{i}"],
            "runc": lambda i: ["runc", "run", "--bundle", bundle, f"rb{i}"],
        }
        crun_note = "not installed"
        if shutil.which("crun"):
            p = subprocess.run(["crun", "run", "--bundle", bundle, "crun-probe"],
                               capture_output=True, text=True, stdin=subprocess.DEVNULL)
            subprocess.run(["crun", "delete", "-f", "crun-probe"], capture_output=True)
            if p.returncode == 0:
                peers["crun"] = lambda i: ["crun", "run", "--bundle", bundle, f"cb{i}"]
                crun_note = "runs"
            else:
                crun_note = "refuses to run here: " + (p.stderr.strip().splitlines() or ["?"])[-1]
        results = {name: [] for name in peers}
        for i in range(args.runs):
            for name, cmd in peers.items():
                results[name].append(run(measure, cmd(i)))

        def med(name, key):
            return statistics.median(r[key] for r in results[name])

        print(f"container benchmark: {args.runs} runs each, alternating, /bin/true in a busybox root")
        print(f"crun: {crun_note}; cgroups: {view}")
        print(f"{'':10} {'wall ms':>9} {'CPU ms':>9} {'peak RSS MiB':>13}")
        for name in peers:
            print(f"{name:10} {med(name, 'wall_ms'):9.1f} {med(name, 'cpu_ms'):9.1f} {med(name, 'rss_mib'):13.2f}")
        for ours in ("kapsel", "kapsel-oci"):
            for peer in [p for p in peers if p not in ("kapsel", "kapsel-oci")]:
                print(f"ratio {ours}/{peer}: wall {med(ours, 'wall_ms') / med(peer, 'wall_ms'):.2f}x, "
                      f"CPU {med(ours, 'cpu_ms') / med(peer, 'cpu_ms'):.2f}x")

        # Memory that stays with each running container: K at once.
        k = 5
        sleep_bundle = oci_bundle(work, rootfs, ["/bin/sleep", "31"])
        mons = {
            "kapsel": monitor_memory([[kapsel, "run-container", "--root", rootfs, "--name", f"km{i}",
                                       "--stop-timeout", "1", "--", "/bin/sleep", "30"] for i in range(k)],
                                     "sleep 30"),
            "runc": monitor_memory([["runc", "run", "--bundle", sleep_bundle, f"rm{i}"] for i in range(k)],
                                   "sleep 31", lambda: [subprocess.run(["runc", "delete", "-f", f"rm{i}"],
                                                                       capture_output=True)
                                                        for i in range(k)]),
        }
        if "crun" in peers:
            mons["crun"] = monitor_memory(
                [["crun", "run", "--bundle", sleep_bundle, f"cm{i}"] for i in range(k)], "sleep 31",
                lambda: [subprocess.run(["crun", "delete", "-f", f"cm{i}"], capture_output=True)
                         for i in range(k)])
        print(f"supervising process per running container ({k} running at once, median; KiB):")
        print(f"{'':8} {'RSS':>8} {'PSS':>8} {'private':>8} {'priv.dirty':>10}")
        for name, samples in mons.items():
            print(f"{name:8} {statistics.median(s['rss'] for s in samples):8.0f} "
                  f"{statistics.median(s['pss'] for s in samples):8.0f} "
                  f"{statistics.median(s['private'] for s in samples):8.0f} "
                  f"{statistics.median(s['dirty'] for s in samples):10.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

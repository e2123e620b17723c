#!/usr/bin/env python3
"""I/O benchmark: Kapsel vs QEMU q35 on virtio-blk and virtio-net.

The `virtio` test guest of kapsel-testguest (a polled virtio 1.x driver at
CPL 3, no interrupts) runs one benchmark mode per VM run, unchanged under
`kapsel run` and under `qemu-system-x86_64 -M q35` (qboot firmware when
installed, as in crates/kapsel/tests/virtio_kvm.rs):

  blk-bench-rand=N      N random 4 KiB reads, qd (32) in flight
  blk-bench-seqread=M   M MiB of 1 MiB reads, one 1 MiB data descriptor
                        each, qd (4) in flight
  blk-bench-seqwrite=M  the same as writes, then FLUSH (inside the time)
  net-bench-tx=N        N 1514-byte frames, the tx ring kept full

The guest times its work with the TSC, calibrated against the PIT, and
prints it ("bench ... us=N"): throughput figures are the guest's. VMM CPU
per request comes from the host: CPU time of the VMM process (user + sys
from wait4, through bench/measure.c) minus the time its vCPU spent in the
guest (cguest_time of this script's /proc entry: the guest only polls), in
a run with the work minus the median of runs with zero work (N=0: boot,
PCI scan, device set-up, calibration), divided by N.

Block: both VMMs get the same raw image file (filled once with random
bytes); QEMU `-drive ...,format=raw,cache=none,aio=native` on
`virtio-blk-pci,disable-legacy=on`, and in the same rounds
`cache=none,aio=io_uring` ("qemu-uring"; QEMU's io_uring back end, the
closest to Kapsel's). Before every run the file's pages are
dropped from the host page cache (posix_fadvise DONTNEED on that file
only), so neither VMM starts with a warm cache. The host's own `dd`
(iflag=direct / oflag=direct conv=fdatasync) on the same file is the
ceiling for sequential throughput.

Network: a network namespace of its own with the VMM's tap in it (nothing
leaves it); an AF_PACKET socket on the tap counts the guest's frames.
QEMU: `-netdev tap,...,vhost=off` (userspace virtio-net like Kapsel's) and,
if /dev/vhost-net exists, also vhost=on ("qemu-vhost": the in-kernel
virtio-net data path), shown separately.

Every figure is the median of --runs runs, with the lowest and highest run
beside it; the load average is printed before and after.

Usage: bench/io.py [--runs N] [--image-mib M] [--rand N] [--seq-mib M]
                   [--frames N] [--only blk|net] [--kapsel PATH]
Needs: root (netns, tap), cargo, gcc, qemu-system-x86_64, /dev/kvm.
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
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
QBOOT = "/usr/share/qemu/qboot.rom"
TAP = "kiob0"
CLK_TCK = os.sysconf("SC_CLK_TCK")

BENCH_RE = re.compile(r"bench (\S+) requests=(\d+) qd=(\d+) bytes=(\d+) cycles=(\d+) "
                      r"tsc-khz=(\d+) us=(\d+) .* kicks=(\d+)")


def build(kapsel=None):
    env = dict(os.environ, CARGO_TARGET_DIR=TARGET)
    if not kapsel:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "kapsel"], cwd=ROOT,
                       check=True, env=env)
    out = subprocess.run(
        ["cargo", "build", "--release", "-q", "-p", "kapsel-testguest", "--message-format=json"],
        cwd=ROOT, check=True, capture_output=True, text=True, env=env).stdout
    guest = None
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "build-script-executed" and "kapsel-testguest" in msg["package_id"]:
            guest = os.path.join(msg["out_dir"], "virtio.elf")
    if not guest or not os.path.exists(guest):
        sys.exit("bench: cannot find the virtio test guest")
    measure = os.path.join(TARGET, "bench", "measure")
    os.makedirs(os.path.dirname(measure), exist_ok=True)
    subprocess.run(["gcc", "-O2", "-static", "-o", measure,
                    os.path.join(ROOT, "bench", "measure.c")], check=True)
    return kapsel or os.path.join(TARGET, "release", "kapsel"), guest, measure


def children_guest_s():
    """Guest time of this process's reaped descendants (cguest_time), seconds."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[41]) / CLK_TCK  # field 44 of proc(5)


def drop_cache(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def parse_run(proc_stderr, stdout, what):
    m = re.search(r"wall_us=(\d+) user_us=(\d+) sys_us=(\d+) maxrss_kib=(\d+) status=(\d+)",
                  proc_stderr)
    if not m:
        sys.exit(f"bench: no measurement from {what}: {proc_stderr}")
    wall, user, sys_, _rss, status = map(int, m.groups())
    if status != 0 or "kapsel-testguest: virtio ok" not in stdout:
        sys.exit(f"bench: {what} failed (status {status}):\n{stdout}\n{proc_stderr}")
    b = BENCH_RE.search(stdout)
    if not b:
        sys.exit(f"bench: no bench line from {what}:\n{stdout}")
    _, req, qd, nbytes, cycles, khz, us, kicks = b.groups()
    return {"wall_s": wall / 1e6, "cpu_s": (user + sys_) / 1e6, "requests": int(req),
            "qd": int(qd), "bytes": int(nbytes), "cycles": int(cycles), "tsc_khz": int(khz),
            "guest_us": int(us), "kicks": int(kicks)}


def run_vm(measure, cmd, what, prefix=()):
    g0 = children_guest_s()
    p = subprocess.run(list(prefix) + [measure] + cmd, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=600)
    r = parse_run(p.stderr, p.stdout, what)
    r["guest_s"] = children_guest_s() - g0
    r["vmm_s"] = r["cpu_s"] - r["guest_s"]
    return r


# --- network -----------------------------------------------------------------

# The host end: sends GO until the guest's frames come, counts its 1514-byte
# kind-4 frames until DONE, prints one line. Runs inside the namespace.
NET_HELPER = r"""
import socket, struct, sys, time
ifname = sys.argv[1]
ETH = 0x88b5
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH))
s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
s.bind((ifname, ETH))
s.settimeout(0.05)
go = (b"\xff" * 6 + bytes.fromhex("020000000001") + struct.pack("!H", ETH) + b"KTG1"
      + bytes([1, 0, 0, 0]) + struct.pack("<II", 0, 0) + bytes(48))
frames = nbytes = 0
first = last = None
done = None
started = gone = False
deadline = time.time() + 60
buf = bytearray(4096)
while done is None and time.time() < deadline:
    if not started:
        try:
            s.send(go)
        except OSError:  # ENETDOWN until the VMM has attached to the tap
            time.sleep(0.01)
            continue
    try:
        n, addr = s.recvfrom_into(buf)
    except socket.timeout:
        if gone:
            break
        continue
    except OSError:  # the VMM exited and its tap went away; drain what is queued
        gone = True
        continue
    if addr[2] == socket.PACKET_OUTGOING or n < 78 or buf[14:18] != b"KTG1":
        continue
    started = True
    kind = buf[18]
    if kind == 4 and n == 1514:
        now = time.monotonic()
        if first is None:
            first = now
        last = now
        frames += 1
        nbytes += n
    elif kind == 3:
        done = struct.unpack("<I", buf[26:30])[0]
packets, drops = struct.unpack("II", s.getsockopt(263, 6, 8))  # PACKET_STATISTICS
span = (last - first) if first is not None and last is not None else 0
print(f"host frames={frames} bytes={nbytes} span_us={int(span * 1e6)} done={done} "
      f"sock_drops={drops}", flush=True)
"""


class Netns:
    def __init__(self):
        self.name = f"kapsel-iobench-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                  "net.ipv6.conf.default.disable_ipv6=1"], check=False)

    def prefix(self):
        return ["ip", "netns", "exec", self.name]

    def run(self, args, check=True, **kw):
        return subprocess.run(self.prefix() + args, check=check, capture_output=True, text=True,
                              **kw)

    def close(self):
        subprocess.run(["ip", "netns", "del", self.name], stderr=subprocess.DEVNULL)


def run_net(ns, measure, cmd, what):
    g0 = children_guest_s()
    vm = subprocess.Popen(ns.prefix() + [measure] + cmd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while ns.run(["ip", "link", "show", TAP], check=False).returncode != 0:
            if vm.poll() is not None or time.time() > deadline:
                out, err = vm.communicate()
                sys.exit(f"bench: {what}: the tap never appeared\n{out}\n{err}")
            time.sleep(0.01)
        ns.run(["ip", "link", "set", TAP, "up"])
        helper = ns.run(["python3", "-c", NET_HELPER, TAP], check=False, timeout=120)
        out, err = vm.communicate(timeout=120)
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()
    r = parse_run(err, out, what)
    r["guest_s"] = children_guest_s() - g0
    r["vmm_s"] = r["cpu_s"] - r["guest_s"]
    h = re.search(r"host frames=(\d+) bytes=(\d+) span_us=(\d+) done=(\S+) sock_drops=(\d+)",
                  helper.stdout)
    if not h:
        sys.exit(f"bench: {what}: no host summary: {helper.stdout}{helper.stderr}\n{out}\n{err}")
    r["host_frames"], r["host_bytes"], r["host_span_us"] = map(int, h.groups()[:3])
    r["host_drops"] = int(h.group(5))
    return r


# --- reporting ---------------------------------------------------------------

def med(xs):
    return statistics.median(xs) if xs else float("nan")


def summarize(runs, zero):
    """Per-VMM figures from the work runs and the zero-work runs."""
    n = runs[0]["requests"]
    z = med([r["vmm_s"] for r in zero])
    zw = med([r["wall_s"] for r in zero])
    rates = [r["requests"] * 1e6 / r["guest_us"] for r in runs]
    mbps = [r["bytes"] / r["guest_us"] for r in runs]
    return {
        "rate": med(rates),
        "rate_range": (min(rates), max(rates)),
        "mbps": med(mbps),
        "mbps_range": (min(mbps), max(mbps)),
        "host_mbps": med([r["bytes"] / (r["wall_s"] - zw) / 1e6 for r in runs]),
        "cpu_us": med([(r["vmm_s"] - z) * 1e6 / n for r in runs]),
        "kicks": med([r["kicks"] for r in runs]),
        "guest_s": med([r["guest_s"] for r in runs]),
        "wall_s": med([r["wall_s"] for r in runs]),
        "zero_wall_s": zw,
        "zero_vmm_s": z,
    }


def dd(args):
    p = subprocess.run(["dd"] + args, capture_output=True, text=True, check=True)
    m = re.search(r"(\d+) bytes .* copied, ([\d.]+) s", p.stderr)
    return int(m.group(1)) / float(m.group(2)) / 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--image-mib", type=int, default=1024)
    ap.add_argument("--rand", type=int, default=20000, help="random 4 KiB reads per run")
    ap.add_argument("--seq-mib", type=int, default=256, help="MiB per sequential run")
    ap.add_argument("--frames", type=int, default=50000, help="frames per network run")
    ap.add_argument("--only", choices=("blk", "net"))
    ap.add_argument("--kapsel", help="a kapsel binary to measure instead of building one")
    ap.add_argument("--dir", default="/var/tmp", help="where the image file goes")
    ap.add_argument("--zram", action="store_true",
                    help="the image is a zram block device (RAM, 4 KiB sectors): no disk "
                         "in the way, so the VMMs' own costs show")
    args = ap.parse_args()
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        sys.exit("bench: qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    kapsel, guest, measure = build(os.path.abspath(args.kapsel) if args.kapsel else None)
    if args.only != "net" and not shutil.which("fio"):
        print("bench: fio not found (apt-get install fio): the host's own random-read IOPS, "
              "the reference for the IOPS target, will not be measured")
    load = os.getloadavg()
    print(f"io benchmark {time.strftime('%Y-%m-%d %H:%M')}, load average before "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {args.runs} runs each, alternating")

    def kapsel_cmd(cmdline, extra):
        return [kapsel, "run", "--kernel", guest, "--memory", "256M", "--console", "stdio",
                "--cmdline", cmdline] + extra

    def qemu_cmd(cmdline, extra):
        return ([qemu, "-enable-kvm", "-M", "q35", "-m", "256M", "-smp", "1", "-nodefaults",
                 "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
                 "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
                + (["-bios", QBOOT] if os.path.exists(QBOOT) else [])
                + ["-kernel", guest, "-append", cmdline] + extra)

    results = {}
    if args.only != "net":
        workdir = tempfile.mkdtemp(prefix="kapsel-iobench-", dir=args.dir)
        zram = None
        try:
            if args.zram:
                zram = zram_add(args.image_mib)
                image = f"/dev/zram{zram}"
            else:
                image = os.path.join(workdir, "disk.raw")
            print(f"filling {args.image_mib} MiB image {image} ...", flush=True)
            with open(image, "r+b" if zram is not None else "wb") as f:
                for _ in range(args.image_mib):
                    f.write(os.urandom(1 << 20))
                f.flush()
                os.fsync(f.fileno())
            blk_bench(args, image, measure, kapsel_cmd, qemu_cmd, results)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            if zram is not None:
                with open("/sys/class/zram-control/hot_remove", "w") as f:
                    f.write(str(zram))
        report(args, results)
    if args.only != "blk":
        net_bench(args, measure, kapsel_cmd, qemu_cmd, results)
        report(args, {"net": results["net"]} if "net" in results else {})
    load = os.getloadavg()
    print(f"load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def zram_add(mib):
    """A new zram device of `mib` MiB (Linux's compressed RAM disk; random
    data is stored as is); its number."""
    try:
        with open("/sys/class/zram-control/hot_add") as f:
            n = int(f.read())
    except OSError as e:
        sys.exit(f"bench: cannot add a zram device ({e}); is CONFIG_ZRAM on (modprobe zram)?")
    with open(f"/sys/block/zram{n}/disksize", "w") as f:
        f.write(f"{mib}M")
    return n


BLK_VMMS = ("kapsel", "qemu", "qemu-uring")


def blk_bench(args, image, measure, kapsel_cmd, qemu_cmd, results):
    def qdisk(aio):
        return ["-drive", f"file={image},if=none,id=d0,format=raw,cache=none,aio={aio}",
                "-device", "virtio-blk-pci,drive=d0,disable-legacy=on"]
    variants = [("kapsel", kapsel_cmd, ["--disk", image]),
                ("qemu", qemu_cmd, qdisk("native")),
                ("qemu-uring", qemu_cmd, qdisk("io_uring"))]
    tests = [("rand", "blk-bench-rand", args.rand), ("seqread", "blk-bench-seqread", args.seq_mib),
             ("seqwrite", "blk-bench-seqwrite", args.seq_mib)]
    dd_read, dd_write, fio_iops = [], [], []
    for test, word, n in tests:
        work = {v[0]: [] for v in variants}
        zero = {v[0]: [] for v in variants}
        for i in range(args.runs):
            # The order rotates every round: no VMM always follows the same one.
            k = i % len(variants)
            for name, mk, extra in variants[k:] + variants[:k]:
                for count, into in ((n, work), (0, zero)):
                    drop_cache(image)
                    r = run_vm(measure, mk(f"{word}={count}", extra), f"{name} {word}={count}")
                    into[name].append(r)
            if test == "rand" and shutil.which("fio"):
                drop_cache(image)
                fio_iops.append(fio_randread(image))
            if test == "seqread":
                drop_cache(image)
                dd_read.append(dd([f"if={image}", "of=/dev/null", "bs=1M", f"count={n}",
                                   "iflag=direct"]))
            if test == "seqwrite":
                dd_write.append(dd(["if=/dev/zero", f"of={image}", "bs=1M", f"count={n}",
                                    "oflag=direct", "conv=notrunc,fdatasync"]))
            print(f"  {test} round {i + 1}: " + ", ".join(
                f"{k} {work[k][-1]['guest_us'] / 1e3:.0f} ms" for k in work), flush=True)
        results[test] = {k: summarize(work[k], zero[k]) for k in work}
    results["dd"] = {"read": med(dd_read), "write": med(dd_write),
                     "read_range": (min(dd_read), max(dd_read)),
                     "write_range": (min(dd_write), max(dd_write))}
    results["fio"] = med(fio_iops) if fio_iops else None
    results["fio_range"] = (min(fio_iops), max(fio_iops)) if fio_iops else None


def fio_randread(image):
    """The host's own 4 KiB random-read IOPS on `image`, as the guests read
    it: 32 in flight, O_DIRECT, io_uring, 3 s."""
    p = subprocess.run(["fio", "--name=host", f"--filename={image}", "--direct=1",
                        "--rw=randread", "--bs=4k", "--iodepth=32", "--ioengine=io_uring",
                        "--runtime=3", "--time_based", "--output-format=json"],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)["jobs"][0]["read"]["iops"]


def net_bench(args, measure, kapsel_cmd, qemu_cmd, results):
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        print("net: skipped (needs root and /dev/net/tun)")
        return
    variants = [("kapsel", kapsel_cmd, ["--net", f"tap={TAP}"]),
                ("qemu", qemu_cmd, ["-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,"
                                    "vhost=off",
                                    "-device", "virtio-net-pci,netdev=n0,disable-legacy=on"])]
    if not os.path.exists("/dev/vhost-net"):
        subprocess.run(["modprobe", "vhost_net"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    if os.path.exists("/dev/vhost-net"):
        variants.append(("qemu-vhost", qemu_cmd,
                         ["-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=on",
                          "-device", "virtio-net-pci,netdev=n0,disable-legacy=on"]))
    else:
        print("net: /dev/vhost-net missing and `modprobe vhost_net` did not bring it "
              "(a kernel without CONFIG_VHOST_NET?): QEMU vhost=on not measured")
    ns = Netns()
    try:
        work = {v[0]: [] for v in variants}
        zero = {v[0]: [] for v in variants}
        for i in range(args.runs):
            for name, mk, extra in variants:
                for count, into in ((args.frames, work), (0, zero)):
                    into[name].append(run_net(ns, measure, mk(f"net-bench-tx={count}", extra),
                                              f"{name} net-bench-tx={count}"))
            print(f"  net round {i + 1}: " + ", ".join(
                f"{k} {work[k][-1]['guest_us'] / 1e3:.0f} ms "
                f"(host got {work[k][-1]['host_frames']})" for k in work), flush=True)
        res = {k: summarize(work[k], zero[k]) for k in work}
        for k in work:
            res[k]["host_frames"] = med([r["host_frames"] for r in work[k]])
            res[k]["host_pps"] = med([r["host_frames"] * 1e6 / r["host_span_us"]
                                      for r in work[k] if r["host_span_us"]])
            res[k]["host_drops"] = max(r["host_drops"] for r in work[k])
        results["net"] = res
    finally:
        ns.close()


def report(args, results):
    def ratio(test, key, peer="qemu"):
        q = results[test][peer][key]
        return results[test]["kapsel"][key] / q if q else float("nan")

    if "rand" in results:
        print()
        what = "zram device" if args.zram else "raw image"
        print(f"virtio-blk, {args.image_mib} MiB {what}; qemu = cache=none,aio=native, "
              "qemu-uring = cache=none,aio=io_uring (guest-timed; median [min-max]; VMM CPU = "
              "process CPU - vCPU guest time, minus a zero-work run)")
        vmms = [k for k in BLK_VMMS if k in results["rand"]]
        print(f"{'':22}" + "".join(f"{k:>26}" for k in vmms))
        rows = [("rand", "rate", "4K random read IOPS", "{:.0f}"),
                ("rand", "cpu_us", "  VMM CPU us/request", "{:.1f}"),
                ("seqread", "mbps", "1M seq read MB/s", "{:.0f}"),
                ("seqread", "cpu_us", "  VMM CPU us/request", "{:.1f}"),
                ("seqwrite", "mbps", "1M seq write MB/s", "{:.0f}"),
                ("seqwrite", "cpu_us", "  VMM CPU us/request", "{:.1f}")]
        for test, key, label, fmt in rows:
            cells = []
            for k in vmms:
                r = results[test][k]
                cell = fmt.format(r[key])
                if key + "_range" in r:
                    lo, hi = r[key + "_range"]
                    cell += f" [{fmt.format(lo)}-{fmt.format(hi)}]"
                cells.append(f"{cell:>26}")
            print(f"{label:22}" + "".join(cells))
        for q in vmms[1:]:
            print(f"ratio kapsel/{q}: IOPS {ratio('rand', 'rate', q):.2f}x, "
                  f"seq read {ratio('seqread', 'mbps', q):.2f}x, "
                  f"seq write {ratio('seqwrite', 'mbps', q):.2f}x")
        f = results.get("fio")
        if f:
            lo, hi = results["fio_range"]
            print(f"host fio 4K random read (qd 32, direct, io_uring) {f:.0f} IOPS [{lo:.0f}-{hi:.0f}]: "
                  + ", ".join(f"{k} {100 * results['rand'][k]['rate'] / f:.0f} %" for k in vmms))
        dd = results["dd"]
        for test, key, label in (("seqread", "read", "read"), ("seqwrite", "write", "write")):
            lo, hi = dd[key + "_range"]
            print(f"host dd {label} (1M, direct) {dd[key]:.0f} MB/s [{lo:.0f}-{hi:.0f}]: "
                  + ", ".join(f"{k} {100 * results[test][k]['mbps'] / dd[key]:.0f} %" for k in vmms))
        best = "qemu-uring" if "qemu-uring" in vmms else "qemu"
        k = results["rand"]["kapsel"]["rate"]
        print("targets: IOPS >= 95 % of host fio: {}; seq >= host dd: read {}, write {}; "
              ">= {}: IOPS {}, read {}, write {}".format(
                  ("met" if k >= 0.95 * f else "MISSED") if f else "no fio",
                  "met" if results["seqread"]["kapsel"]["mbps"] >= dd["read"] else "MISSED",
                  "met" if results["seqwrite"]["kapsel"]["mbps"] >= dd["write"] else "MISSED",
                  best,
                  "met" if ratio("rand", "rate", best) >= 1 else "MISSED",
                  "met" if ratio("seqread", "mbps", best) >= 1 else "MISSED",
                  "met" if ratio("seqwrite", "mbps", best) >= 1 else "MISSED"))
        for test in ("rand", "seqread", "seqwrite"):
            for k in vmms:
                r = results[test][k]
                print(f"  detail {test} {k}: wall {r['wall_s']:.2f} s (zero-work {r['zero_wall_s']:.2f} s), "
                      f"host-timed {r['host_mbps']:.1f} MB/s, guest time {r['guest_s']:.2f} s, "
                      f"doorbells {r['kicks']:.0f}")
    if "net" in results:
        res = results["net"]
        print()
        print(f"virtio-net tx, {args.frames} frames of 1514 bytes to a tap (guest-timed; "
              "host column: frames the AF_PACKET socket counted)")
        print(f"{'':12} {'frames/s':>10} {'min-max':>15} {'Gbit/s':>8} {'CPU us/frame':>13} "
              f"{'host got':>9} {'host fr/s':>10} {'doorbells':>9}")
        for k, r in res.items():
            lo, hi = r["rate_range"]
            print(f"{k:12} {r['rate']:10.0f} {f'{lo:.0f}-{hi:.0f}':>15} "
                  f"{r['mbps'] * 8 / 1e3:8.3f} {r['cpu_us']:13.2f} "
                  f"{r['host_frames']:9.0f} {r['host_pps']:10.0f} {r['kicks']:9.0f}")
        for peer in ("qemu", "qemu-vhost"):
            if peer in res:
                q = res[peer]
                print(f"ratio kapsel/{peer}: frames/s {res['kapsel']['rate'] / q['rate']:.2f}x, "
                      f"CPU/frame {res['kapsel']['cpu_us'] / q['cpu_us']:.2f}x")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Summary of a bench/nested-diag.sh run: the guest's own boot phases,
initcalls, largest gaps in its log, CPUID and flag differences, and the VM
exits counted in L1, Kapsel against QEMU microvm,rtc=on (medians over runs)."""
import glob, os, re, statistics, sys

out = sys.argv[1]
VMMS = ["kapsel", "microvm-rtc"]
SVM_EXIT = {0x60: "INTR", 0x61: "NMI", 0x64: "VINTR", 0x6e: "RDTSC", 0x72: "CPUID",
            0x77: "PAUSE", 0x78: "HLT", 0x7b: "IOIO", 0x7c: "MSR", 0x7f: "SHUTDOWN",
            0x81: "VMMCALL", 0x87: "RDTSCP", 0x8d: "XSETBV", 0x400: "NPF",
            0x401: "AVIC_INCOMPLETE_IPI", 0x402: "AVIC_UNACCELERATED", 0x0: "READ_CR0",
            0x10: "WRITE_CR0", 0x14: "WRITE_CR4", 0x403: "VMGEXIT", 0x8f: "EFER_WRITE_TRAP",
            0x41: "EXCP_DB", 0x46: "EXCP_UD", 0x4e: "EXCP_PF", 0x52: "EXCP_MC", 0x6f: "RDPMC",
            0x7e: "TASK_SWITCH", 0x65: "CR0_SEL_WRITE", 0x75: "INVLPGA", 0x79: "INVLPG"}

def runs(vmm):
    return sorted(glob.glob(f"{out}/{vmm}-*.log"), key=lambda p: int(re.search(r"-(\d+)\.log$", p).group(1)))

def sections(text):
    res, cur, name = {}, None, None
    for line in text.splitlines():
        line = line.rstrip("\r")
        if line.startswith("DIAG-BEGIN "):
            name, cur = line[11:].strip(), []
        elif line == "DIAG-END" and cur is not None:
            res[name], cur = cur, None
        elif cur is not None:
            cur.append(line)
    return res

TS = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$")
MILESTONES = [
    ("kernel clock starts (Linux version)", r"Linux version"),
    ("tsc / kvm-clock frequency", r"tsc: Detected|kvm-clock: using sched offset|tsc: Fast TSC|tsc: Marking TSC"),
    ("Calibrating delay loop", r"Calibrating delay loop"),
    ("APIC timer / TSC deadline", r"TSC deadline timer|APIC timer|Switched APIC routing|x2apic enabled"),
    ("smp: Brought up", r"smp: Brought up"),
    ("ACPI: Interpreter enabled", r"ACPI: Interpreter enabled"),
    ("PCI: host bridge / root bus", r"PCI host bridge to bus|pci_bus 0000:00: root bus"),
    ("clocksource: Switched to", r"clocksource: Switched to clocksource"),
    ("serial8250 registered", r"ttyS0 at I/O"),
    ("rtc_cmos registered", r"rtc_cmos .*registered|rtc_cmos: probe"),
    ("i8042", r"i8042"),
    ("Freeing unused kernel image", r"Freeing unused kernel image"),
    ("init starts (Run ... as init)", r"Run /\S+ as init process"),
    ("tsc: Refined / clocksource tsc", r"tsc: Refined|Switched to clocksource tsc"),
]

def parse(path):
    text = open(path, errors="replace").read()
    sec = sections(text)
    dm = []
    for line in sec.get("dmesg", []):
        m = TS.match(line)
        if m:
            dm.append((float(m.group(1)), m.group(2)))
    calls = {}
    for t, msg in dm:
        m = re.match(r"initcall (\S+?)\+0x\S+ returned -?\d+ after (\d+) usecs", msg)
        if m:
            calls[m.group(1)] = calls.get(m.group(1), 0) + int(m.group(2))
    miles = {}
    for label, rx in MILESTONES:
        for t, msg in dm:
            if re.search(rx, msg):
                miles[label] = (t, msg)
                break
    up = re.search(r"DIAG-UPTIME-AT-UP=(\d+\.\d+)", text)
    meas = open(path[:-4] + ".measure").read() if os.path.exists(path[:-4] + ".measure") else ""
    m = re.search(r"wall_us=(\d+) user_us=(\d+) sys_us=(\d+)", meas)
    exits = {}
    try:
        cur = None
        for line in open(path[:-4] + ".exits"):
            if line.startswith("== "):
                cur = line[3:].strip()
                exits[cur] = {}
            elif cur and line.startswith("{") and "hitcount:" in line:
                key = re.sub(r"\s+", " ", line.split("}")[0].strip("{ \n"))
                exits[cur][key] = int(line.split("hitcount:")[1].split()[0])
    except OSError:
        pass
    return dict(text=text, sec=sec, dm=dm, calls=calls, miles=miles,
                up=float(up.group(1)) if up else float("nan"),
                wall=int(m.group(1)) / 1e6 if m else float("nan"),
                cpu=(int(m.group(2)) + int(m.group(3))) / 1e6 if m else float("nan"),
                exits=exits)

data = {v: [parse(p) for p in runs(v)] for v in VMMS}
if not all(data.values()):
    sys.exit(f"report: no runs of {[v for v in VMMS if not data[v]]} in {out}")
med = lambda xs: statistics.median(xs) if xs else float("nan")
print(f"runs: {', '.join(f'{v} {len(data[v])}' for v in VMMS)} (medians)")
if os.path.exists(f"{out}/load"):
    print(open(f"{out}/load").read().strip())
print(f"\n{'':44} {'kapsel':>10} {'microvm-rtc':>12} {'diff':>8}")
rows = [("wall s (exec to exit)", lambda r: r["wall"]), ("CPU s", lambda r: r["cpu"]),
        ("guest uptime at KAPSEL-GUEST-UP", lambda r: r["up"])]
rows += [(f"[{label}]", (lambda lab: lambda r: r["miles"][lab][0] if lab in r["miles"] else float("nan"))(label))
         for label, _ in MILESTONES]
rows += [("sum of initcalls s", lambda r: sum(r["calls"].values()) / 1e6)]
for name, f in rows:
    k, q = med([f(r) for r in data["kapsel"]]), med([f(r) for r in data["microvm-rtc"]])
    print(f"{name:44} {k:10.3f} {q:12.3f} {k - q:+8.3f}")

print("\ninitcalls, largest Kapsel − QEMU difference (median usecs):")
names = set().union(*(r["calls"] for v in VMMS for r in data[v]))
diffs = []
for n in names:
    k = med([r["calls"].get(n, 0) for r in data["kapsel"]])
    q = med([r["calls"].get(n, 0) for r in data["microvm-rtc"]])
    diffs.append((k - q, n, k, q))
diffs.sort(reverse=True)
for d, n, k, q in diffs[:25]:
    print(f"  {n:40} kapsel {k:9.0f}  qemu {q:9.0f}  diff {d:+9.0f}")
print("  ... most negative:")
for d, n, k, q in diffs[-8:]:
    print(f"  {n:40} kapsel {k:9.0f}  qemu {q:9.0f}  diff {d:+9.0f}")

for v in VMMS:
    r = data[v][0]
    gaps = sorted(((b[0] - a[0], a, b) for a, b in zip(r["dm"], r["dm"][1:])), reverse=True)[:12]
    print(f"\nlargest gaps in the kernel log, {v} run 1:")
    for g, a, b in gaps:
        print(f"  {g:7.3f} s before [{b[0]:.3f}] {b[1][:90]}")
        print(f"            after  [{a[0]:.3f}] {a[1][:90]}")

ka, qa = data["kapsel"][0], data["microvm-rtc"][0]
print("\nCPUID leaves that differ (kapsel / qemu):")
def leaves(r):
    return {l.split(":")[0]: l.split(": ", 1)[1] for l in r["sec"].get("cpuid", []) if l.startswith("CPUID")}
kl, ql = leaves(ka), leaves(qa)
for key in sorted(set(kl) | set(ql)):
    if kl.get(key) != ql.get(key):
        print(f"  {key}\n     kapsel {kl.get(key)}\n     qemu   {ql.get(key)}")
def flags(r):
    for l in r["sec"].get("flags", []):
        if l.startswith("flags"):
            return set(l.split(":", 1)[1].split())
    return set()
kf, qf = flags(ka), flags(qa)
print(f"\n/proc/cpuinfo flags only under kapsel: {' '.join(sorted(kf - qf))}")
print(f"/proc/cpuinfo flags only under qemu:   {' '.join(sorted(qf - kf))}")
for s in ["clocksource", "pci", "pnp", "acpi", "ioports"]:
    print(f"\n{s}:\n  kapsel: {' | '.join(ka['sec'].get(s, []))}\n  qemu:   {' | '.join(qa['sec'].get(s, []))}")
for pat in [r"tsc|TSC|clocksource|kvm-clock|Calibrating|lpj|APIC|apic|hpet|HPET|pit|PIT|rtc|RTC|i8042|serial|8250"]:
    for v, r in [("kapsel", ka), ("qemu", qa)]:
        print(f"\nclock/timer/probe lines, {v}:")
        for t, msg in r["dm"]:
            if re.search(pat, msg) and not msg.startswith(("calling", "initcall")):
                print(f"  [{t:9.3f}] {msg[:110]}")

print("\nVM exits counted in L1 (median per run):")
for ev in ["kvm_exit", "kvm_userspace_exit", "kvm_pio", "kvm_msr", "kvm_mmio"]:
    keys = set()
    for v in VMMS:
        for r in data[v]:
            keys |= set(r["exits"].get(ev, {}))
    rows = []
    for key in keys:
        k = med([r["exits"].get(ev, {}).get(key, 0) for r in data["kapsel"]])
        q = med([r["exits"].get(ev, {}).get(key, 0) for r in data["microvm-rtc"]])
        rows.append((max(k, q), key, k, q))
    rows.sort(reverse=True)
    tk = sum(med([r["exits"].get(ev, {}).get(key, 0) for r in data["kapsel"]]) for key in keys)
    tq = sum(med([r["exits"].get(ev, {}).get(key, 0) for r in data["microvm-rtc"]]) for key in keys)
    print(f"  {ev}: total kapsel {tk:.0f}, qemu {tq:.0f}")
    for _, key, k, q in rows[:15]:
        label = key
        m = re.match(r"exit_reason: (\d+)", key)
        if m:
            label = f"{key} ({SVM_EXIT.get(int(m.group(1)), '?')})"
        print(f"    {label:50} kapsel {k:9.0f}  qemu {q:9.0f}")

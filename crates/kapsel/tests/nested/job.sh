#!/bin/sh
# Runs inside the nested testbed's L1 (busybox sh): boots the L2 Linux guest
# under `kapsel run` in several scenarios. For each scenario NAME it leaves
# in $KAPSEL_OUT: NAME.log (guest console), NAME.err (kapsel's stderr),
# NAME.exit (kapsel's exit status), NAME.seen (L1's `date +%s` when the
# guest printed its clock), NAME.secs (wall time of the run), NAME.sandbox
# (kapsel's capability, no_new_privs and seccomp lines while the guest runs).
# The daemon and cgroup2 scenarios leave their own files (see daemon_scenario
# and cgroup2_scenario below).
# Cheap knobs for the test only: `quiet mitigations=off` keep the L2 kernel
# from spending its time on console output and Spectre work under TCG.
OUT=$KAPSEL_OUT
BASE="console=ttyS0 quiet mitigations=off"
BOOT_TIMEOUT=${BOOT_TIMEOUT:-240}

# boot NAME STOP_AFTER_UPS KAPSEL_ARGS...
# With BOOT_SIGNAL_ON=MARKER, kapsel gets SIGTERM once the console shows MARKER.
boot() {
    name=$1 stop_after=$2
    shift 2
    log=$OUT/$name.log
    : >"$log"
    start=$(date +%s)
    "$KAPSEL" run --console "file:$log" "$@" <"${BOOT_STDIN:-/dev/null}" \
        >"${BOOT_STDOUT:-/dev/stdout}" 2>"$OUT/$name.err" &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        # Once the guest writes to its console, kapsel is confined: keep
        # what /proc says about that, for the sandbox check.
        if [ ! -e "$OUT/$name.sandbox" ] && [ -s "$log" ]; then
            grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' "/proc/$pid/status" >"$OUT/$name.sandbox"
        fi
        if [ ! -e "$OUT/$name.seen" ] && grep -q KAPSEL-EPOCH "$log"; then
            date +%s >"$OUT/$name.seen"
        fi
        if [ -n "${BOOT_SIGNAL_ON:-}" ] && [ ! -e "$OUT/$name.signalled" ] &&
            grep -q "$BOOT_SIGNAL_ON" "$log"; then
            kill -TERM "$pid" && touch "$OUT/$name.signalled"
        fi
        ups=$(grep -c KAPSEL-GUEST-UP "$log")
        if [ "$stop_after" -gt 0 ] && [ "$ups" -ge "$stop_after" ]; then
            kill "$pid"
        fi
        if [ $(($(date +%s) - start)) -gt "$BOOT_TIMEOUT" ]; then
            echo "TIMEOUT after ${BOOT_TIMEOUT}s" >>"$OUT/$name.err"
            kill -9 "$pid"
        fi
        sleep 0.2
    done
    wait "$pid"
    echo $? >"$OUT/$name.exit"
    # A process the sandbox killed (exit 159: SIGSYS) is named with the
    # forbidden syscall in the kernel's audit log: keep that line.
    if [ "$(cat "$OUT/$name.exit")" = 159 ]; then
        dmesg | grep 'type=1326' >>"$OUT/$name.err"
    fi
    # A guest that prints its clock and powers off within one poll interval
    # ends the loop before it looks: the marker is then at most 0.2 s old.
    if [ ! -e "$OUT/$name.seen" ] && grep -q KAPSEL-EPOCH "$log"; then
        date +%s >"$OUT/$name.seen"
    fi
    echo $(($(date +%s) - start)) >"$OUT/$name.secs"
    echo "scenario $name: exit $(cat "$OUT/$name.exit") in $(cat "$OUT/$name.secs")s, $(grep -c KAPSEL-GUEST-UP "$log") boot(s)"
}

# snapshot FILE: what of kapseld's networking exists in L1 (links, nft).
snapshot() {
    {
        echo "# links"
        ip -o link show | awk -F': ' '{ print $2 }' | cut -d@ -f1
        echo "# nft"
        nft list tables 2>&1
    } >"$1"
}

# The daemon scenario: kapseld runs three VMs of a vm.conf: "dhcp" on a
# locked `local interface` (VM id 1: it must get 100.64.1.3 from the built-in DHCP
# server and reach the host at 100.64.1.2), "switch-a" and "switch-b" on
# `switch "lan"` (locked lladdr), talking to each other. Leaves in $OUT: daemon-NAME.console
# (each guest's console, replayed by `kapsel console` after it stopped),
# daemon-NAME.wait (what `kapsel wait` said), daemon.err (the daemon's log),
# daemon.exit (its exit status after SIGTERM), daemon.sandbox (the dhcp VM
# process's /proc status lines while it ran), daemon.during and daemon.after
# (links and nft tables while the daemon ran and after it stopped),
# daemon.secs, daemon.log (a summary) and daemon.vmerr (the VMs' stderr).
daemon_scenario() {
    start=$(date +%s)
    for m in tun bridge crc32c_generic nf_tables nft_chain_nat nft_masq nft_meta_bridge; do
        modprobe "$m" || echo "cannot load $m" >>"$OUT/daemon.err"
    done
    d=/tmp/kapseld
    rm -rf $d && mkdir -p $d/state
    sock=$d/kapsel.sock
    vm() { # NAME TEST INTERFACE-LINE
        printf 'vm "%s" {\n\tboot "%s"\n\tinitrd "%s"\n\tcmdline "%s kapsel.test=%s"\n\tmemory 192M\n\t%s\n}\n' \
            "$1" "$KAPSEL_L2_KERNEL" "$KAPSEL_L2_INITRD" "$BASE" "$2" "$3"
    }
    {
        # Both locked to the guests' MACs: the locking must let each
        # guest's own traffic (DHCP, ARP, IP) through.
        printf 'switch "lan" {\n\tlocked lladdr\n}\n'
        vm dhcp dhcp 'local interface { locked lladdr }'
        vm switch-a switch-a 'interface { switch "lan" }'
        vm switch-b switch-b 'interface { switch "lan" }'
    } >$d/vm.conf
    cp $d/vm.conf "$OUT/daemon.conf"
    "$KAPSEL" daemon -f $d/vm.conf --socket $sock --state-dir $d/state \
        >>"$OUT/daemon.err" 2>&1 &
    daemon=$!
    k() { "$KAPSEL" --socket $sock "$@"; }
    # Until all three run (at most a minute): then the host holds their
    # taps, the switch's bridge and the NAT table.
    i=0
    while [ $i -lt 120 ] && [ "$(k status 2>/dev/null | grep -c ' running ')" -lt 3 ]; do
        sleep 0.5
        i=$((i + 1))
    done
    snapshot "$OUT/daemon.during"
    # Guests outlive the daemon: kill -9 of kapseld while the three boot,
    # and a new kapseld adopts them (same pids); the rest of the scenario
    # (DHCP, the switch, the waits and consoles) runs under the new one.
    before=$(k status 2>/dev/null | awk '$2 ~ /^[0-9]+$/ { print $NF, $2 }' | sort)
    kill -KILL $daemon
    wait $daemon 2>/dev/null
    adopt_start=$(date +%s)
    "$KAPSEL" daemon -f $d/vm.conf --socket $sock --state-dir $d/state \
        >>"$OUT/daemon.err" 2>&1 &
    daemon=$!
    i=0
    after=""
    while [ $i -lt 100 ]; do
        after=$(k status 2>/dev/null | awk '$2 ~ /^[0-9]+$/ { print $NF, $2 }' | sort)
        [ -n "$after" ] && [ "$after" = "$before" ] && break
        sleep 0.1
        i=$((i + 1))
    done
    {
        echo "before: $before" | tr '\n' ' '
        echo
        echo "after: $after" | tr '\n' ' '
        echo
        if [ -n "$before" ] && [ "$after" = "$before" ]; then
            echo "adopted: yes in $(($(date +%s) - adopt_start))s"
        else
            echo "adopted: no"
        fi
    } >"$OUT/daemon.adopt"
    # The dhcp VM's process confinement, sampled until it ends (the last
    # sample is kept; the guest has run for seconds by then).
    pid=$(k status dhcp 2>/dev/null | awk '$NF == "dhcp" && $2 ~ /^[0-9]+$/ { print $2 }')
    if [ -n "$pid" ]; then
        while grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' "/proc/$pid/status" \
            >$d/sandbox 2>/dev/null; do
            cp $d/sandbox "$OUT/daemon.sandbox"
            sleep 0.5
        done &
    fi
    # All three waits at once: a guest may power off before another's.
    waits=""
    for name in dhcp switch-a switch-b; do
        timeout $BOOT_TIMEOUT "$KAPSEL" --socket $sock wait $name >"$OUT/daemon-$name.wait" 2>&1 &
        waits="$waits $!"
    done
    # shellcheck disable=SC2086 # one pid per word
    wait $waits
    for name in dhcp switch-a switch-b; do
        timeout 20 "$KAPSEL" --socket $sock console $name </dev/null >"$OUT/daemon-$name.console" 2>&1
    done
    k status >"$OUT/daemon.status" 2>&1
    kill -TERM $daemon
    wait $daemon
    echo $? >"$OUT/daemon.exit"
    snapshot "$OUT/daemon.after"
    cat $d/state/* >"$OUT/daemon.vmerr" 2>/dev/null
    echo $(($(date +%s) - start)) >"$OUT/daemon.secs"
    {
        for name in dhcp switch-a switch-b; do
            echo "$name: $(cat "$OUT/daemon-$name.wait")"
        done
        echo "daemon exit $(cat "$OUT/daemon.exit")"
    } >"$OUT/daemon.log"
    echo "scenario daemon: exit $(cat "$OUT/daemon.exit") in $(cat "$OUT/daemon.secs")s"
}

# The cgroup2 scenario: L1 becomes a pure cgroup v2 host (cgroup2 alone at
# /sys/fs/cgroup with nsdelegate, every controller enabled in the root's
# subtree_control, as systemd leaves it) and runs busybox containers:
# `kapsel run-container` with memory, pids and cpus limits (from the
# root), then kapseld in a systemd-like delegated service cgroup
# (system.slice/kapseld.service, Delegate=yes: trusted.delegate=1) with a
# vm.conf container: limits, an OOM kill through exec, a pids-limited fork
# loop, pause/unpause through cgroup.freeze, stop, and what is left.
# Leaves in $OUT: cgroup2.log (KEY=VALUE lines, read by nested_linux.rs),
# cgroup2-run.console (the run-container's output), cgroup2.err (kapsel's
# stderr and the daemon's log), cgroup2.exit (0 once the job got through),
# cgroup2.secs.
# pivot_root(2) refuses to move a root that is the initramfs itself (rootfs
# has no parent mount), so the scenario runs in a mount namespace whose /
# is a bind mount of L1's root moved over it, as switch_root leaves a
# system (a mere chroot would not do: setns(2) into a container's mount
# namespace, as exec does, finds the namespace's top mount).
cgroup2_scenario() {
    : >"$OUT/cgroup2.log"
    : >"$OUT/cgroup2.err"
    mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup 2>>"$OUT/cgroup2.err" ||
        echo MOUNT=failed >>"$OUT/cgroup2.log"
    mkdir -p /tmp/l1root
    KAPSEL_SCENARIOS=cgroup2-rooted unshare -m sh -c \
        'mount --rbind / /tmp/l1root && cd /tmp/l1root && mount --move . / &&
         exec chroot . /bin/sh /mnt/job.sh' 2>>"$OUT/cgroup2.err"
}

cgroup2_rooted() {
    start=$(date +%s)
    log=$OUT/cgroup2.log err=$OUT/cgroup2.err
    r() { echo "$1=$2" >>"$log"; }
    cg=/sys/fs/cgroup
    r V1_MOUNTS "$(grep -c ' cgroup ' /proc/mounts)"
    r V2_MOUNTS "$(grep -c ' cgroup2 ' /proc/mounts)"

    # A busybox root from L1's own static busybox, in a directory only root
    # may enter (kapseld refuses a root other users can reach: vm.conf(5)).
    rm -rf /tmp/ctdir && mkdir -m 700 /tmp/ctdir
    ct=/tmp/ctdir/root
    mkdir -p $ct/bin $ct/sbin $ct/etc $ct/proc $ct/sys $ct/dev $ct/tmp
    cp /bin/busybox $ct/bin/busybox
    for a in $(busybox --list); do
        [ -e $ct/bin/$a ] || ln -s busybox $ct/bin/$a
    done
    ln -s ../bin/busybox $ct/sbin/init
    printf '::sysinit:/bin/echo kapsel-ct-booted\n::respawn:/bin/sleep 1000\n::shutdown:/bin/echo kapsel-ct-shutdown\n' >$ct/etc/inittab
    # What the checks inside a container do: each prints KEY=VALUE.
    cat >$ct/bin/limits <<'EOS'
#!/bin/sh
cd /sys/fs/cgroup || exit 1
echo "CT_CGROUP=$(cut -d: -f3 /proc/self/cgroup)"
echo "CT_MEMORY_MAX=$(cat memory.max)"
echo "CT_SWAP_MAX=$(cat memory.swap.max)"
echo "CT_PIDS_MAX=$(cat pids.max)"
echo "CT_CPU_MAX=$(cat cpu.max)"
EOS
    cat >$ct/bin/oom <<'EOS'
#!/bin/sh
# A 48 MiB buffer, filled: far beyond the limit; the OOM killer ends dd.
dd if=/dev/zero of=/dev/null bs=48M count=1 2>/dev/null
echo "CT_ALLOC_EXIT=$?"
echo "CT_OOM_KILL=$(sed -n 's/^oom_kill //p' /sys/fs/cgroup/memory.events)"
EOS
    cat >$ct/bin/forks <<'EOS'
#!/bin/sh
# Up to 100 background sleeps; the subshell dies at the first refused fork.
rm -f /tmp/forked
sh -c 'i=0; while [ $i -lt 100 ]; do sleep 60 & i=$((i + 1)); echo $i >/tmp/forked; done' 2>/dev/null
echo "CT_FORKED=$(cat /tmp/forked)"
echo "CT_PIDS_CURRENT=$(cat /sys/fs/cgroup/pids.current)"
echo "CT_PIDS_EVENTS_MAX=$(sed -n 's/^max //p' /sys/fs/cgroup/pids.events)"
killall sleep 2>/dev/null
EOS
    cat >$ct/bin/spin <<'EOS'
#!/bin/sh
# Two seconds of a busy loop at a 0.5 CPU quota: throttled.
timeout 2 sh -c 'while :; do :; done'
echo "CT_THROTTLED=$(sed -n 's/^nr_throttled //p' /sys/fs/cgroup/cpu.stat)"
EOS
    chmod +x $ct/bin/limits $ct/bin/oom $ct/bin/forks $ct/bin/spin

    # 0. A fresh hierarchy: Kapsel enables what its limits need itself.
    r BARE_SUBTREE "$(cat $cg/cgroup.subtree_control)"
    "$KAPSEL" run-container --root $ct --name cg2-bare --memory 16M --pids 24 --cpus 0.5 \
        --console "file:$OUT/cgroup2-bare.console" -- /bin/limits 2>>"$err"
    r BARE_EXIT $?
    sed -n 's/^CT_/BARE_/p' "$OUT/cgroup2-bare.console" >>"$log"
    r BARE_ROOT_SUBTREE "$(cat $cg/cgroup.subtree_control)"
    r BARE_KAPSEL_SUBTREE "$(cat $cg/kapsel/cgroup.subtree_control)"
    # Then every controller, as systemd leaves a pure v2 host.
    for c in $(cat $cg/cgroup.controllers); do
        echo "+$c" >$cg/cgroup.subtree_control 2>>"$err"
    done
    r ROOT_SUBTREE "$(cat $cg/cgroup.subtree_control)"

    # 1. kapsel run-container from the root cgroup (an application container).
    t=$(date +%s)
    "$KAPSEL" run-container --root $ct --name cg2-run --memory 16M --pids 24 --cpus 0.5 \
        --console "file:$OUT/cgroup2-run.console" -- \
        /bin/sh -c 'limits; oom; forks; spin; echo CT_DONE=1' 2>>"$err"
    r RUN_EXIT $?
    r RUN_SECS $(($(date +%s) - t))
    sed -n 's/^CT_/RUN_/p' "$OUT/cgroup2-run.console" >>"$log"
    r RUN_LEFT "$(ls -d $cg/kapsel/cg2-run 2>/dev/null)"

    # 2. kapseld in a delegated service cgroup, as systemd starts it with
    # contrib/kapseld.service (Delegate=yes).
    svc=$cg/system.slice/kapseld.service
    mkdir -p $svc
    for c in $(cat $cg/system.slice/cgroup.controllers); do
        echo "+$c" >$cg/system.slice/cgroup.subtree_control 2>>"$err"
    done
    setfattr -n trusted.delegate -v 1 $svc 2>>"$err" || r SETFATTR failed
    d=/tmp/kapseld-cg2
    rm -rf $d && mkdir -p $d/state
    sock=$d/kapsel.sock
    printf 'container "web" {\n\troot "%s"\n\tmemory 16M\n\tpids 24\n\tcpus 1\n}\n' $ct >$d/vm.conf
    t=$(date +%s)
    sh -c "echo \$\$ >$svc/cgroup.procs && exec \"$KAPSEL\" daemon -f $d/vm.conf --socket $sock --state-dir $d/state" \
        >>"$err" 2>&1 &
    daemon=$!
    k() { "$KAPSEL" --socket $sock "$@"; }
    i=0
    while [ $i -lt 60 ] && kill -0 $daemon 2>/dev/null &&
        ! k status web 2>/dev/null | grep -q ' running '; do
        sleep 0.5
        i=$((i + 1))
    done
    r DAEMON_UP_SECS $(($(date +%s) - t))
    pid=$(k status web 2>/dev/null | awk '$NF == "web" && $2 ~ /^[0-9]+$/ { print $2 }')
    r DAEMON_CGROUP "$(cut -d: -f3 /proc/$daemon/cgroup)"
    r WEB_CGROUP "$(cut -d: -f3 /proc/$pid/cgroup 2>/dev/null)"
    web=$svc/kapsel/web
    r SVC_SUBTREE "$(cat $svc/cgroup.subtree_control)"
    r SVC_PROCS "$(wc -l <$svc/cgroup.procs)"
    r WEB_MEMORY_MAX "$(cat $web/memory.max)"
    r WEB_PIDS_MAX "$(cat $web/pids.max)"
    r WEB_CPU_MAX "$(cat $web/cpu.max)"
    k exec web -- /bin/limits </dev/null >$d/exec.out 2>>"$err"
    r EXEC_LIMITS_STATUS $?
    sed -n 's/^CT_/EXEC_/p' $d/exec.out >>"$log"
    k exec web -- /bin/oom </dev/null >$d/exec.out 2>>"$err"
    r EXEC_OOM_STATUS $?
    sed -n 's/^CT_/EXEC_/p' $d/exec.out >>"$log"
    r WEB_OOM_KILL "$(sed -n 's/^oom_kill //p' $web/memory.events)"
    r WEB_AFTER_OOM "$(k status web 2>&1 | awk '$NF == "web" { print $(NF - 2) }')"
    k exec web -- /bin/forks </dev/null >$d/exec.out 2>>"$err"
    r EXEC_FORKS_STATUS $?
    sed -n 's/^CT_/EXEC_/p' $d/exec.out >>"$log"
    r WEB_PIDS_EVENTS_MAX "$(sed -n 's/^max //p' $web/pids.events)"
    k pause web 2>>"$err"
    r PAUSED_FREEZE "$(cat $web/cgroup.freeze)"
    r PAUSED_EVENTS "$(grep frozen $web/cgroup.events)"
    r PAUSED_STATE "$(k status web 2>&1 | awk '$NF == "web" { print $(NF - 2) }')"
    k unpause web 2>>"$err"
    r UNPAUSED_EVENTS "$(grep frozen $web/cgroup.events)"
    r STOP "$(k stop -w web 2>&1)"
    r WEB_LEFT "$(ls -d $web 2>/dev/null)"
    r MOUNTS_LEFT "$(grep -c $ct /proc/mounts)"
    kill -TERM $daemon
    wait $daemon
    r DAEMON_EXIT $?
    r TREE_LEFT "$(cd $svc && find . -mindepth 1 -type d | tr '\n' ' ')"
    r ROOT_LEFT "$(cd $cg/kapsel && find . -mindepth 1 -type d | tr '\n' ' ')"
    echo 0 >"$OUT/cgroup2.exit"
    echo $(($(date +%s) - start)) >"$OUT/cgroup2.secs"
    echo "scenario cgroup2: in $(cat "$OUT/cgroup2.secs")s"
}

K="--kernel $KAPSEL_L2_KERNEL --initrd $KAPSEL_L2_INITRD"
# The list comes from SCENARIOS in nested_linux.rs; the default runs all.
for scenario in ${KAPSEL_SCENARIOS:-cpus1 cpus2 cpus4 reboot restart panic vmlinux virtio net button daemon cgroup2 bios biosqcow2}; do
    case $scenario in
    cpus1) boot cpus1 0 $K --cpus 1 --memory 256M --cmdline "$BASE" ;;
    cpus2) boot cpus2 0 $K --cpus 2 --memory 512M --cmdline "$BASE" ;;
    cpus4) boot cpus4 0 $K --cpus 4 --memory 384M --cmdline "$BASE" ;;
    reboot) boot reboot 0 $K --on-reboot exit --cmdline "$BASE kapsel.test=reboot" ;;
    restart) boot restart 2 $K --on-reboot restart --cmdline "$BASE kapsel.test=reboot" ;;
    panic) boot panic 0 $K --cmdline "$BASE panic=-1 kapsel.test=badinit" ;;
    vmlinux)
        # The generic kernel's ELF vmlinux boots through its PVH entry note.
        boot vmlinux 0 --kernel "$KAPSEL_SHARE/files/vmlinux" --initrd "$KAPSEL_L2_INITRD" \
            --memory 256M --cmdline "$BASE"
        ;;
    virtio)
        # Disks live in $OUT so that the host can check them afterwards:
        # vda holds the initrd (known content), vdb is written by the guest,
        # vdc is read-only.
        cp "$KAPSEL_L2_INITRD" "$OUT/vda.img" && truncate -s 4M "$OUT/vda.img"
        # vdd: a qcow2 overlay (made on the host with qemu-img) on a raw base.
        cp "$KAPSEL_SHARE/files/base.raw" "$KAPSEL_SHARE/files/overlay.qcow2" "$OUT/"
        dd if=/dev/zero of="$OUT/vdb.img" bs=1M count=4 2>/dev/null
        dd if=/dev/zero of="$OUT/vdc.img" bs=1M count=1 2>/dev/null
        # The virtio console is on stdio: its output goes to virtio.hvc, and a
        # line is typed once a second (Linux holds input that arrives before
        # hvc0 is opened until the next interrupt, as a real keyboard would).
        rm -f /tmp/hvc-in && mkfifo /tmp/hvc-in
        (for i in $(seq 60); do echo typed-on-hvc0; sleep 1; done) >/tmp/hvc-in 2>/dev/null &
        typist=$!
        BOOT_STDIN=/tmp/hvc-in BOOT_STDOUT="$OUT/virtio.hvc" \
            boot virtio 0 $K --memory 256M --rng --cmdline "$BASE kapsel.test=virtio" \
            --disk "$OUT/vda.img,serial=kapsel-vda" --disk "$OUT/vdb.img" \
            --disk "$OUT/vdc.img,ro,serial=ro-disk" --disk "$OUT/overlay.qcow2" \
            --virtio-console stdio
        kill $typist 2>/dev/null || true
        ;;
    button)
        # SIGTERM to kapsel presses the ACPI power button; the guest powers off.
        BOOT_SIGNAL_ON=KAPSEL-BUTTON-READY \
            boot button 0 $K --memory 256M --cmdline "$BASE kapsel.test=button"
        ;;
    net)
        # kapsel creates the tap kt0; once it exists, L1 addresses it and
        # serves 100 MiB of random data over HTTP for the guest to fetch.
        modprobe tun 2>/dev/null
        mkdir -p /tmp/www
        dd if=/dev/urandom of=/tmp/www/net.bin bs=1M count=100 2>/dev/null
        md5sum </tmp/www/net.bin | cut -d' ' -f1 >"$OUT/net.md5"
        (
            i=0
            while ! ip link show kt0 >/dev/null 2>&1 && [ $i -lt 600 ]; do
                sleep 0.1
                i=$((i + 1))
            done
            ip addr add 192.0.2.1/24 dev kt0
            ip link set kt0 up
            exec httpd -f -p 192.0.2.1:8080 -h /tmp/www
        ) &
        server=$!
        boot net 0 $K --memory 256M --net tap=kt0,mac=52:54:00:12:34:56 \
            --cmdline "$BASE kapsel.test=net"
        kill $server 2>/dev/null || true
        rm -rf /tmp/www
        ;;
    # A disk with its own boot loader, through SeaBIOS (no --kernel).
    bios) boot bios 0 --disk /mnt/files/grub.img,format=raw,ro --bios /mnt/files/bios-microvm.bin \
        --cpus 2 --memory 256M ;;
    biosqcow2) boot biosqcow2 0 --disk /mnt/files/grub.qcow2,ro \
        --bios /mnt/files/bios-microvm.bin --cpus 2 --memory 256M ;;
    daemon) daemon_scenario ;;
    cgroup2) cgroup2_scenario ;;
    cgroup2-rooted) cgroup2_rooted ;;
    esac
done

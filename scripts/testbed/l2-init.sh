#!/bin/sh
# /init of the L2 test guest (busybox, Debian cloud kernel). Installed by
# scripts/testbed/build.sh into l2-initrd.cpio.
#
# Console markers, one per line (tests grep for them):
#   KAPSEL-GUEST-UP               userspace reached, modules loaded
#   KAPSEL-NPROC=<n>              online CPUs
#   KAPSEL-MEMTOTAL-KB=<n>        MemTotal from /proc/meminfo
#   KAPSEL-EPOCH=<s>              date +%s (the clock comes from the CMOS RTC)
#   KAPSEL-MODULE-FAILED=<name>   only if a module could not be loaded
#   KAPSEL-TEST=<action>          the action taken next
# Kernel command line: kapsel.test=poweroff (default) | reboot | shell | panic | badinit
# (The kernel hands parameters with a dot to no one but /proc/cmdline.)

export PATH=/sbin:/bin:/usr/sbin:/usr/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp

while read -r module; do
    case $module in '' | '#'*) continue ;; esac
    modprobe -q "$module" 2>/dev/null || echo "KAPSEL-MODULE-FAILED=$module"
done </etc/kapsel-modules

echo "KAPSEL-GUEST-UP"
echo "KAPSEL-NPROC=$(nproc)"
echo "KAPSEL-MEMTOTAL-KB=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
echo "KAPSEL-EPOCH=$(date +%s)"

action=poweroff
read -r cmdline </proc/cmdline
for arg in $cmdline; do
    case $arg in kapsel.test=*) action=${arg#kapsel.test=} ;; esac
done
echo "KAPSEL-TEST=$action"

case $action in
reboot)
    reboot -f
    ;;
shell)
    echo "busybox shell on the console; 'poweroff' or exit to leave"
    # busybox poweroff/reboot/halt signal PID 1 (USR2/TERM/USR1); this
    # script is PID 1, so it acts on them. The shell runs in the background
    # so that `wait` returns for a signal; cttyhack gives it the console.
    trap 'poweroff -f' USR2
    trap 'reboot -f' TERM
    trap 'poweroff -f' USR1
    export PS1='kapsel-guest:\w# ' HOME=/root
    setsid cttyhack sh &
    wait $!
    ;;
panic)
    echo 1 >/proc/sys/kernel/sysrq
    echo c >/proc/sysrq-trigger
    ;;
badinit)
    # PID 1 exits: the kernel panics ("Attempted to kill init!").
    exit 1
    ;;
button)
    # The ACPI power button: Linux's button driver turns the press into a
    # KEY_POWER input event; wait for one, then power off as a distribution
    # (systemd-logind, acpid) would.
    modprobe -q button 2>/dev/null
    modprobe -q evdev 2>/dev/null
    dev=$(awk '/^N: Name="Power Button"/ { found = 1 } found && /^H: Handlers=/ {
        for (i = 1; i <= NF; i++) if ($i ~ /^event/) { print $i; exit } }' /proc/bus/input/devices)
    if [ -n "$dev" ] && [ -c "/dev/input/$dev" ]; then
        # Open the device before saying ready: evdev gives an event only to
        # readers that had it open, and a press that came between the
        # message and dd's open (a loaded host) was lost.
        exec 3<"/dev/input/$dev"
        echo "KAPSEL-BUTTON-READY=$dev"
        dd of=/dev/null bs=24 count=1 <&3 2>/dev/null
        echo "KAPSEL-POWER-BUTTON"
    else
        echo "KAPSEL-BUTTON-MISSING"
        cat /proc/bus/input/devices
    fi
    ;;
net)
    # eth0 gets 192.0.2.2/24 (TEST-NET-1: the outer VM has no other network);
    # the host end of the tap is 192.0.2.1 and serves net.bin over HTTP.
    ip link set lo up
    ip addr add 192.0.2.2/24 dev eth0
    ip link set eth0 up
    echo "KAPSEL-NET-MAC=$(cat /sys/class/net/eth0/address)"
    if ping -c 3 -W 5 192.0.2.1 >/dev/null 2>&1; then
        echo "KAPSEL-PING=ok"
    else
        echo "KAPSEL-PING=failed"
    fi
    start=$(date +%s)
    sum=$(wget -q -O - http://192.0.2.1:8080/net.bin | md5sum | cut -d' ' -f1)
    echo "KAPSEL-NET-RX-MD5=$sum"
    echo "KAPSEL-NET-RX-SECONDS=$(($(date +%s) - start))"
    ;;
virtio)
    # Report the virtio disks and entropy source; write 1 MiB to vdb at
    # offset 1 MiB for the host to check; try to write the read-only vdc.
    for d in /sys/block/vd*; do
        [ -e "$d" ] || continue
        echo "KAPSEL-DISK=${d##*/} size=$(cat "$d/size") ro=$(cat "$d/ro") serial=$(cat "$d/serial" 2>/dev/null)"
    done
    [ -b /dev/vda ] && echo "KAPSEL-VDA-MD5=$(md5sum </dev/vda | cut -d' ' -f1)"
    if [ -b /dev/vdb ]; then
        dd if=/dev/urandom of=/tmp/blob bs=64k count=16 2>/dev/null
        dd if=/tmp/blob of=/dev/vdb bs=64k seek=16 conv=fsync 2>/dev/null
        echo "KAPSEL-VDB-WROTE-MD5=$(md5sum </tmp/blob | cut -d' ' -f1)"
        echo 3 >/proc/sys/vm/drop_caches
        echo "KAPSEL-VDB-READBACK-MD5=$(dd if=/dev/vdb bs=64k skip=16 count=16 2>/dev/null | md5sum | cut -d' ' -f1)"
    fi
    if [ -b /dev/vdd ]; then
        # A qcow2 overlay on a raw base: read the base through it, write 1 MiB.
        echo "KAPSEL-VDD-MD5=$(md5sum </dev/vdd | cut -d' ' -f1)"
        dd if=/dev/urandom of=/tmp/blob2 bs=64k count=16 2>/dev/null
        dd if=/tmp/blob2 of=/dev/vdd bs=64k seek=32 conv=fsync 2>/dev/null
        echo "KAPSEL-VDD-WROTE-MD5=$(md5sum </tmp/blob2 | cut -d' ' -f1)"
    fi
    if [ -b /dev/vdc ]; then
        if dd if=/dev/zero of=/dev/vdc bs=512 count=1 conv=fsync 2>/dev/null; then
            echo "KAPSEL-RO-WRITE=allowed"
        else
            echo "KAPSEL-RO-WRITE=refused"
        fi
    fi
    echo "KAPSEL-RNG=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
    echo "KAPSEL-RNG-BYTES=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | wc -c)"
    if [ -c /dev/hvc0 ]; then
        # The virtio console: say hello there, and read a line typed on it.
        echo "KAPSEL-HVC-HELLO" >/dev/hvc0
        if read -r -t 20 line </dev/hvc0; then
            echo "KAPSEL-HVC-IN=$line"
        fi
    fi
    ;;
poweroff) ;;
*)
    echo "KAPSEL-TEST-UNKNOWN=$action (known: poweroff reboot shell panic badinit virtio net button)"
    ;;
esac
poweroff -f
# Only reached if poweroff itself failed; PID 1 must not exit quietly.
sleep 1
echo "KAPSEL-POWEROFF-FAILED"
exec sh

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
poweroff) ;;
*)
    echo "KAPSEL-TEST-UNKNOWN=$action (known: poweroff reboot shell panic badinit)"
    ;;
esac
poweroff -f
# Only reached if poweroff itself failed; PID 1 must not exit quietly.
sleep 1
echo "KAPSEL-POWEROFF-FAILED"
exec sh

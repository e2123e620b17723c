#!/bin/sh
# /diag.sh of the diagnostic L2 initramfs (bench/nested-diag.sh; booted with
# rdinit=/diag.sh): does what /init does up to KAPSEL-GUEST-UP, then prints
# the guest's view of the machine and its whole kernel log, and powers off.
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
read -r up _ </proc/uptime
echo "DIAG-UPTIME-AT-UP=$up"
section() { echo "DIAG-BEGIN $1"; shift; "$@" 2>&1; echo "DIAG-END"; }
section cpuid /cpuid-dump
section flags sh -c 'grep -m1 "^flags" /proc/cpuinfo; grep -m1 "^bogomips" /proc/cpuinfo; grep -m1 "MHz" /proc/cpuinfo'
section clocksource sh -c 'cat /sys/devices/system/clocksource/clocksource0/current_clocksource /sys/devices/system/clocksource/clocksource0/available_clocksource; grep -h "" /sys/devices/system/clockevents/clockevent0/current_device 2>/dev/null'
section interrupts cat /proc/interrupts
section ioports cat /proc/ioports
section iomem cat /proc/iomem
section pci sh -c 'for d in /sys/bus/pci/devices/*; do [ -e "$d" ] && echo "${d##*/} $(cat $d/vendor):$(cat $d/device) class $(cat $d/class)"; done'
section pnp sh -c 'for d in /sys/bus/pnp/devices/*; do [ -e "$d" ] && echo "${d##*/} $(cat $d/id)"; done'
section acpi sh -c 'ls /sys/firmware/acpi/tables'
section meminfo head -5 /proc/meminfo
# Every console byte is a VM exit two levels down: leave out the "calling"
# lines and initcalls that took under a millisecond.
section dmesg sh -c 'dmesg | awk '"'"'/ calling  / { next } / initcall .* usecs$/ && $(NF-1) < 1000 { next } { print }'"'"'' 
poweroff -f

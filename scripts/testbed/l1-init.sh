#!/bin/sh
# /init of the L1 VM of the nested testbed (busybox, Debian generic kernel
# booted through PVH under QEMU TCG). Installed by scripts/testbed/build.sh
# into l1-initrd.cpio; run by scripts/testbed/run.sh.
#
# Mounts the host's share at /mnt (9p), loads kvm-amd, runs /mnt/job.sh with
# busybox sh (stdout and stderr on the console, cwd /mnt), writes its exit
# status to /mnt/.testbed/exit-status and powers off. If the share cannot be
# mounted or /dev/kvm does not appear, it says so on the console (and in
# /mnt/.testbed/error when the share is there) and powers off.

export PATH=/bin:/sbin
export HOME=/tmp

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /tmp /mnt
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp

fail() {
    echo "KAPSEL-L1-ERROR: $*"
    [ -d /mnt/.testbed ] && echo "$*" >/mnt/.testbed/error
    sync
    poweroff -f
    sleep 10
}

while read -r module; do
    case $module in '' | '#'*) continue ;; esac
    modprobe -q "$module" || echo "KAPSEL-L1: cannot load module $module"
done </etc/kapsel-modules

mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /mnt ||
    fail "cannot mount the 9p share (tag 'share')"
mkdir -p /mnt/.testbed /mnt/out

# Host binaries copied by run.sh come with their shared libraries under
# /mnt/sysroot at their host paths; link them into / so the binaries start
# through their usual interpreter (/lib64/ld-linux-x86-64.so.2) and
# /proc/self/exe is the binary itself.
if [ -d /mnt/sysroot ]; then
    for top in /mnt/sysroot/*; do
        name=${top##*/}
        if [ ! -e "/$name" ]; then
            ln -s "$top" "/$name"
        else
            for entry in "$top"/*; do
                [ -e "/$name/${entry##*/}" ] || ln -s "$entry" "/$name/${entry##*/}"
            done
        fi
    done
fi

[ -c /dev/kvm ] || fail "/dev/kvm did not appear (kvm-amd: $(dmesg | grep -i -m1 -E 'kvm|svm'))"

# Environment for the job (documented at the top of scripts/testbed/run.sh).
export KAPSEL_SHARE=/mnt
export KAPSEL_OUT=/mnt/out
export KAPSEL_L2_KERNEL=/mnt/l2/vmlinuz
export KAPSEL_L2_INITRD=/mnt/l2/initrd.cpio
export PATH=/mnt/bin:$PATH
[ -x /mnt/bin/kapsel ] && export KAPSEL=/mnt/bin/kapsel
# shellcheck disable=SC1091 # written by run.sh for each run
[ -f /mnt/.testbed/env ] && . /mnt/.testbed/env

echo "KAPSEL-L1-UP $(cut -d' ' -f1 /proc/uptime)s"
cd /mnt || fail "cannot enter /mnt"
# A session of its own with the console as controlling terminal, so an
# interactive job (a shell, kapsel run --console stdio) behaves on a tty.
setsid cttyhack sh /mnt/job.sh
status=$?
echo "$status" >/mnt/.testbed/exit-status
echo "KAPSEL-L1-JOB-EXIT=$status $(cut -d' ' -f1 /proc/uptime)s"
cd /
sync
umount /mnt 2>/dev/null
poweroff -f
sleep 10

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
#   KAPSEL-DHCP-IP=, -MASK=, -ROUTER=, -DNS=, -HOSTNAME=, -LEASE=
#                                 (dhcp) what the DHCP server offered
#   KAPSEL-DHCP-ADDR=<ip/len>     (dhcp) the address eth0 holds afterwards
#   KAPSEL-PING=ok|failed         (net, dhcp, switch-*) the peer answered
#   KAPSEL-SWITCH-TX-MD5=, -RX-MD5= (switch-*) what was sent and received
# Kernel command line: kapsel.test=poweroff (default) | reboot | shell | panic
# | badinit | button | virtio | net | dhcp | switch-a | switch-b
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
dhcp)
    # The daemon's built-in DHCP server on a `local interface`: ask with
    # busybox's udhcpc, apply what it offers, then ping the router (the
    # host side of the /31).
    ip link set lo up
    ip link set eth0 up
    echo "KAPSEL-NET-MAC=$(cat /sys/class/net/eth0/address)"
    cat >/tmp/udhcpc.sh <<'SCRIPT'
#!/bin/sh
# udhcpc calls this with deconfig, bound, renew, nak; the options in $ip,
# $mask (prefix length), $subnet, $router, $dns, $hostname, $lease.
case $1 in
deconfig) ip -4 addr flush dev "$interface" ;;
bound | renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    for r in $router; do ip route add default via "$r" dev "$interface"; done
    {
        echo "KAPSEL-DHCP-IP=$ip"
        echo "KAPSEL-DHCP-MASK=$subnet"
        echo "KAPSEL-DHCP-ROUTER=$router"
        echo "KAPSEL-DHCP-DNS=$dns"
        echo "KAPSEL-DHCP-HOSTNAME=$hostname"
        echo "KAPSEL-DHCP-LEASE=$lease"
    } >/tmp/dhcp.env
    ;;
esac
SCRIPT
    chmod +x /tmp/udhcpc.sh
    # -n: give up without a lease (after -t tries, -T s apart); -q: quit
    # once configured; -f: stay in the foreground.
    if udhcpc -i eth0 -f -q -n -t 10 -T 2 -s /tmp/udhcpc.sh >/dev/null 2>&1; then
        cat /tmp/dhcp.env
        echo "KAPSEL-DHCP-ADDR=$(ip -4 -o addr show dev eth0 | awk '{ print $4; exit }')"
        router=$(awk -F= '/^KAPSEL-DHCP-ROUTER=/ { split($2, r, " "); print r[1] }' /tmp/dhcp.env)
        if ping -c 2 -W 5 "$router" >/dev/null 2>&1; then
            echo "KAPSEL-PING=ok"
        else
            echo "KAPSEL-PING=failed"
        fi
    else
        echo "KAPSEL-DHCP-FAILED"
    fi
    ;;
switch-a | switch-b)
    # Two guests on one switch (198.51.100.0/24, TEST-NET-2): each pings the
    # other; a serves 1 MiB over HTTP that b fetches, then b sends 1 MiB to
    # a over TCP (nc). a stays up until b's data has arrived, so neither
    # powers off while the other still needs it.
    ip link set lo up
    if [ "$action" = switch-a ]; then
        me=198.51.100.1 peer=198.51.100.2
    else
        me=198.51.100.2 peer=198.51.100.1
    fi
    ip addr add "$me/24" dev eth0
    ip link set eth0 up
    echo "KAPSEL-NET-MAC=$(cat /sys/class/net/eth0/address)"
    mkdir -p /tmp/www
    dd if=/dev/urandom of=/tmp/www/blob bs=64k count=16 2>/dev/null
    echo "KAPSEL-SWITCH-TX-MD5=$(md5sum </tmp/www/blob | cut -d' ' -f1)"
    # The peer may still be booting: try for up to 2 minutes.
    ping_peer() {
        until=$(($(date +%s) + 120))
        while [ "$(date +%s)" -lt $until ]; do
            if ping -c 1 -W 1 "$peer" >/dev/null 2>&1; then
                echo "KAPSEL-PING=ok"
                return 0
            fi
            sleep 0.2
        done
        echo "KAPSEL-PING=failed"
        return 1
    }
    if [ "$action" = switch-a ]; then
        httpd -p "$me:80" -h /tmp/www
        ping_peer
        timeout 120 nc -l -p 5000 >/tmp/rx
        echo "KAPSEL-SWITCH-RX-MD5=$(md5sum </tmp/rx | cut -d' ' -f1)"
    else
        ping_peer
        i=0
        while [ $i -lt 60 ] && ! wget -q -O /tmp/rx "http://$peer/blob" 2>/dev/null; do
            sleep 1
            i=$((i + 1))
        done
        echo "KAPSEL-SWITCH-RX-MD5=$(md5sum </tmp/rx | cut -d' ' -f1)"
        # a listens once it has pinged us; retry until it does.
        i=0
        while [ $i -lt 60 ] && ! timeout 60 nc "$peer" 5000 </tmp/www/blob >/dev/null 2>&1; do
            sleep 1
            i=$((i + 1))
        done
        echo "KAPSEL-SWITCH-SENT=$i"
    fi
    ;;
poweroff) ;;
*)
    echo "KAPSEL-TEST-UNKNOWN=$action (known: poweroff reboot shell panic badinit virtio net button dhcp switch-a switch-b)"
    ;;
esac
poweroff -f
# Only reached if poweroff itself failed; PID 1 must not exit quietly.
sleep 1
echo "KAPSEL-POWEROFF-FAILED"
exec sh

#!/usr/bin/env bash
# scripts/testbed/build.sh — build the nested testbed's artefacts from Debian
# packages. Idempotent: whatever is cached and up to date is kept.
#
# Usage: scripts/testbed/build.sh [--refresh] [--quiet]
#   --refresh  resolve the kernel packages again (apt-get update first) and
#              rebuild everything that depends on them
#   --quiet    print only errors
#
# Cache: $KAPSEL_TESTBED_DIR (default <repo>/.testbed):
#   l1-vmlinux        ELF vmlinux of Debian's generic kernel (booted via PVH)
#   l1-initrd.cpio    busybox, kvm-amd, virtio-pci and 9p modules, l1-init.sh
#   l2-vmlinuz        Debian's cloud kernel (bzImage)
#   l2-initrd.cpio    busybox, virtio and pvpanic modules, l2-init.sh
#   kvmcheck          static smoke test for /dev/kvm (kvmcheck.c)
#   kconfig-facts.txt the L2 kernel's options that matter to the VMM
#   packages.env      the resolved package names (pinned until --refresh)
#   debs/ pkg/        downloaded and unpacked packages
# Needs: apt-get, dpkg-deb, depmod/modprobe (kmod), cpio, python3, gcc
# (static glibc from libc6-dev).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TB=${KAPSEL_TESTBED_DIR:-$REPO/.testbed}

# Modules loaded at boot, in this order (dependencies are added by modprobe).
# A trailing '?' marks a module that may not exist in this kernel.
L1_BOOT_MODULES="irqbypass kvm kvm-amd virtio_ring virtio virtio_pci
    9pnet 9pnet_virtio netfs fscache 9p"
# Shipped in the L1 initramfs but loaded by jobs on demand (modprobe NAME).
# bridge, nf_tables, nft_chain_nat and nft_masq (with nf_nat, nf_conntrack,
# nf_defrag_ipv4/6, libcrc32c, nfnetlink, stp, llc) are what kapseld's
# switches and `local interface` NAT need; nft_meta_bridge the `bridge`
# family rules of `locked lladdr`.
L1_EXTRA_MODULES="tun veth bridge vhost_net? vhost_vsock? crc32c_generic nf_tables
    nft_chain_nat nft_masq nft_ct nft_meta_bridge?"
L2_BOOT_MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev
    virtio_pci virtio_mmio virtio_blk failover net_failover virtio_net
    virtio_console virtio_rng pvpanic? pvpanic-mmio? pvpanic-pci?"
L2_EXTRA_MODULES="vmw_vsock_virtio_transport? button? evdev?"

refresh=0
quiet=0
for arg in "$@"; do
    case $arg in
    --refresh) refresh=1 ;;
    --quiet) quiet=1 ;;
    -h | --help)
        sed -n '2,/^set -e/p' "$HERE/build.sh" | sed -e '$d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "build.sh: unknown argument '$arg' (try --help)" >&2
        exit 2
        ;;
    esac
done

say() { [ "$quiet" = 1 ] || echo "testbed: $*"; }
die() {
    echo "testbed: error: $*" >&2
    exit 1
}

for tool in apt-get apt-cache dpkg-deb depmod modprobe cpio python3 gcc flock; do
    command -v "$tool" >/dev/null ||
        die "'$tool' not found; on Debian: apt-get install apt dpkg kmod cpio python3 gcc libc6-dev"
done

mkdir -p "$TB/debs" "$TB/pkg"
# One build at a time per cache (parallel run.sh calls share it).
exec 9>"$TB/.build.lock"
flock 9

# --- package names --------------------------------------------------------

# The real, versioned package behind a Debian metapackage, e.g.
# linux-image-amd64 -> linux-image-6.1.0-56-amd64.
resolve_meta() {
    apt-cache depends "$1" 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}

resolve_packages() {
    local l1 l2
    l1=$(resolve_meta linux-image-amd64)
    l2=$(resolve_meta linux-image-cloud-amd64)
    if [ -z "$l1" ] || [ -z "$l2" ] || [ "$refresh" = 1 ]; then
        if [ "$(id -u)" = 0 ]; then
            say "apt-get update"
            apt-get update -qq >/dev/null || die "apt-get update failed"
        elif [ -z "$l1" ] || [ -z "$l2" ]; then
            die "apt-cache knows no linux-image-amd64/linux-image-cloud-amd64; run 'apt-get update' as root"
        fi
        l1=$(resolve_meta linux-image-amd64)
        l2=$(resolve_meta linux-image-cloud-amd64)
    fi
    if [ -z "$l1" ] || [ -z "$l2" ]; then
        die "cannot resolve linux-image-amd64/linux-image-cloud-amd64 with apt-cache depends"
    fi
    cat >"$TB/packages.env.tmp" <<EOF
L1_KERNEL_PKG=$l1
L2_KERNEL_PKG=$l2
BUSYBOX_PKG=busybox-static
EOF
    mv "$TB/packages.env.tmp" "$TB/packages.env"
    say "packages: $l1 (L1), $l2 (L2), busybox-static"
}

if [ "$refresh" = 1 ] || [ ! -f "$TB/packages.env" ]; then
    resolve_packages
fi
# shellcheck source=/dev/null
. "$TB/packages.env"

# --- download and unpack --------------------------------------------------

# Prints the path of the unpacked package $1, downloading it if needed.
unpack() {
    local pkg=$1 deb dir=$TB/pkg/$1
    if [ ! -f "$dir/.unpacked" ]; then
        deb=$(find "$TB/debs" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n 1)
        if [ -z "$deb" ]; then
            say "downloading $pkg" >&2
            (cd "$TB/debs" && apt-get download -q "$pkg" >/dev/null 2>&1) ||
                (cd "$TB/debs" && apt-get download "$pkg" >&2) ||
                die "apt-get download $pkg failed"
            deb=$(find "$TB/debs" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n 1)
        fi
        rm -rf "$dir"
        mkdir -p "$dir"
        dpkg-deb -x "$deb" "$dir"
        basename "$deb" >"$dir/.unpacked"
    fi
    echo "$dir"
}

L1_ROOT=$(unpack "$L1_KERNEL_PKG")
L2_ROOT=$(unpack "$L2_KERNEL_PKG")
BB_ROOT=$(unpack "$BUSYBOX_PKG")
L1_KVER=${L1_KERNEL_PKG#linux-image-}
L2_KVER=${L2_KERNEL_PKG#linux-image-}
BUSYBOX=$BB_ROOT/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing in $BUSYBOX_PKG"
for root_kver in "$L1_ROOT:$L1_KVER" "$L2_ROOT:$L2_KVER"; do
    root=${root_kver%%:*} kver=${root_kver#*:}
    [ -f "$root/boot/vmlinuz-$kver" ] || die "$root/boot/vmlinuz-$kver missing"
    [ -f "$root/lib/modules/$kver/modules.dep" ] || depmod -b "$root" "$kver"
done

# Rebuild $1 when it is missing or older than any of the other arguments.
stale() {
    local target=$1 dep
    shift
    [ -e "$target" ] || return 0
    for dep in "$@"; do
        [ "$dep" -nt "$target" ] && return 0
    done
    return 1
}

# --- kernels --------------------------------------------------------------

if stale "$TB/l2-vmlinuz" "$L2_ROOT/.unpacked"; then
    cp "$L2_ROOT/boot/vmlinuz-$L2_KVER" "$TB/l2-vmlinuz.tmp"
    mv "$TB/l2-vmlinuz.tmp" "$TB/l2-vmlinuz"
    say "l2-vmlinuz: $L2_KVER"
fi
if stale "$TB/l1-vmlinux" "$L1_ROOT/.unpacked" "$HERE/extract-vmlinux.py"; then
    python3 "$HERE/extract-vmlinux.py" "$L1_ROOT/boot/vmlinuz-$L1_KVER" "$TB/l1-vmlinux"
    say "l1-vmlinux: $L1_KVER (ELF extracted from the XZ vmlinuz)"
fi

if stale "$TB/kconfig-facts.txt" "$L2_ROOT/.unpacked" "$L1_ROOT/.unpacked" "$HERE/build.sh"; then
    {
        echo "# $L2_KERNEL_PKG (L2 guest kernel)"
        grep -E '^(# )?CONFIG_(PVPANIC[A-Z_]*|RTC_CLASS|RTC_HCTOSYS|RTC_SYSTOHC|RTC_DRV_CMOS|SERIAL_8250|SERIAL_8250_(CONSOLE|PNP|NR_UARTS|RUNTIME_UARTS)|SERIO_I8042|KEYBOARD_ATKBD|PVH|ACPI|ACPI_(BUTTON|REDUCED_HARDWARE_ONLY)|X86_MPPARSE|X86_X2APIC|HPET_TIMER|PCI_MMCONFIG|KVM_GUEST|PARAVIRT|VIRTIO[A-Z_]*|HW_RANDOM_VIRTIO|VHOST[A-Z_]*|VSOCKETS|VIRTIO_VSOCKETS|NET_9P|MAGIC_SYSRQ|KERNEL_[A-Z0-9]+)[= ]' \
            "$L2_ROOT/boot/config-$L2_KVER"
        echo "# $L1_KERNEL_PKG (L1 kernel)"
        grep -E '^(# )?CONFIG_(PVH|KVM|KVM_AMD|NET_9P|9P_FS|KERNEL_[A-Z0-9]+)[= ]' \
            "$L1_ROOT/boot/config-$L1_KVER"
    } >"$TB/kconfig-facts.txt"
fi

# --- initramfs ------------------------------------------------------------

# Copies the modules named in $4.. with their dependencies from the unpacked
# kernel $1 (version $2) into the initramfs tree $3 and runs depmod there.
# Prints the names that exist, one per line (for /etc/kapsel-modules).
install_modules() {
    local root=$1 kver=$2 dest=$3 name optional line path
    shift 3
    mkdir -p "$dest/lib/modules/$kver"
    for name in "$@"; do
        optional=0
        case $name in *'?') optional=1 name=${name%'?'} ;; esac
        if ! line=$(modprobe -d "$root" -S "$kver" --show-depends "$name" 2>/dev/null); then
            [ "$optional" = 1 ] && continue
            die "module $name not found in $kver"
        fi
        while read -r kind path _; do
            [ "$kind" = insmod ] || continue
            path=${path#"$root"}
            mkdir -p "$dest/$(dirname "$path")"
            cp "$root/$path" "$dest/$path"
        done <<<"$line"
        echo "$name"
    done
    cp "$root/lib/modules/$kver/modules.builtin" "$root/lib/modules/$kver/modules.order" \
        "$root/lib/modules/$kver/modules.builtin.modinfo" "$dest/lib/modules/$kver/"
    depmod -b "$dest" "$kver"
}

# Builds an uncompressed newc cpio $2 from the tree $1 (owned by root).
pack_cpio() {
    (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$2.tmp"
    mv "$2.tmp" "$2"
}

# Creates the skeleton shared by both initramfs trees in $1: busybox with its
# applets as symlinks in /bin (/sbin links to it), the mount points, and
# /dev/console (when run as root; the kernel's built-in initramfs also
# provides it).
skeleton() {
    local dest=$1 applet
    rm -rf "$dest"
    mkdir -p "$dest"/{bin,dev,etc,proc,sys,tmp,mnt,root}
    ln -s bin "$dest/sbin"
    cp "$BUSYBOX" "$dest/bin/busybox"
    for applet in $("$BUSYBOX" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$dest/bin/$applet"
    done
    if [ "$(id -u)" = 0 ]; then
        mknod -m 600 "$dest/dev/console" c 5 1
        mknod -m 666 "$dest/dev/null" c 1 3
    fi
}

if stale "$TB/l2-initrd.cpio" "$L2_ROOT/.unpacked" "$BB_ROOT/.unpacked" "$HERE/build.sh" "$HERE/l2-init.sh"; then
    tree=$TB/tree-l2
    skeleton "$tree"
    mkdir -p "$tree/usr"
    ln -s ../bin "$tree/usr/bin"
    ln -s ../bin "$tree/usr/sbin"
    # shellcheck disable=SC2086 # word splitting of the module lists is wanted
    install_modules "$L2_ROOT" "$L2_KVER" "$tree" $L2_BOOT_MODULES >"$tree/etc/kapsel-modules.all"
    # shellcheck disable=SC2086
    install_modules "$L2_ROOT" "$L2_KVER" "$tree" $L2_EXTRA_MODULES >/dev/null
    mv "$tree/etc/kapsel-modules.all" "$tree/etc/kapsel-modules"
    install -m 755 "$HERE/l2-init.sh" "$tree/init"
    pack_cpio "$tree" "$TB/l2-initrd.cpio"
    rm -rf "$tree"
    say "l2-initrd.cpio: $(du -k "$TB/l2-initrd.cpio" | cut -f1) KiB"
fi

if stale "$TB/l1-initrd.cpio" "$L1_ROOT/.unpacked" "$BB_ROOT/.unpacked" "$HERE/build.sh" "$HERE/l1-init.sh"; then
    tree=$TB/tree-l1
    # No /usr, /lib64 or /lib/x86_64-linux-gnu: they stay free for the host
    # libraries that run.sh ships in the share's sysroot.
    skeleton "$tree"
    # shellcheck disable=SC2086
    install_modules "$L1_ROOT" "$L1_KVER" "$tree" $L1_BOOT_MODULES >"$tree/etc/kapsel-modules.all"
    # shellcheck disable=SC2086
    install_modules "$L1_ROOT" "$L1_KVER" "$tree" $L1_EXTRA_MODULES >/dev/null
    mv "$tree/etc/kapsel-modules.all" "$tree/etc/kapsel-modules"
    install -m 755 "$HERE/l1-init.sh" "$tree/init"
    pack_cpio "$tree" "$TB/l1-initrd.cpio"
    rm -rf "$tree"
    say "l1-initrd.cpio: $(du -k "$TB/l1-initrd.cpio" | cut -f1) KiB"
fi

# --- smoke test binary ----------------------------------------------------

if stale "$TB/kvmcheck" "$HERE/kvmcheck.c"; then
    gcc -static -O2 -Wall -Wextra -o "$TB/kvmcheck.tmp" "$HERE/kvmcheck.c" ||
        die "cannot build kvmcheck (static glibc comes with libc6-dev)"
    mv "$TB/kvmcheck.tmp" "$TB/kvmcheck"
    say "kvmcheck built"
fi

say "ready in $TB"

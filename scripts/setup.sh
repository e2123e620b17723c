#!/usr/bin/env bash
# scripts/setup.sh — install what building and testing Kapsel needs on a
# fresh Debian/Ubuntu machine (idempotent; needs root or sudo).
#   Rust toolchain: cargo (rustup or Debian's), used as found.
#   Debian packages: gcc (test guests), qemu-utils (qcow2 checks), qemu-system-x86 (peer in benchmarks,
#   outer VM of the nested testbed), busybox-static, kmod, cpio, xz-utils
#   (testbed images), iproute2 and nftables (switches, MAC locking and NAT of kapsel-daemon's
#   networking, and its network-namespace tests; busybox's udhcpc is their DHCP client), runc and
#   crun (peers in bench/container.py), debootstrap (the Debian root of the systemd container
#   test, made once into /var/cache/kapsel-test), attr (setfattr: the nested cgroup2 scenario
#   marks a cgroup delegated as systemd does), podman with conmon, netavark and aardvark-dns,
#   containerd and docker.io (the real clients of kapsel-oci's tests: crates/kapsel-oci/tests/
#   podman.rs and clients.rs; each test runs its own private daemon), libseccomp-dev and
#   pkg-config (kapsel-oci compiles config.json's seccomp profile with libseccomp, as runc does),
#   seabios (the BIOS `kapsel run` boots disks through without --kernel) and ovmf (UEFI, next),
#   grub-pc-bin, grub-common, xorriso and mtools (the GRUB disk of the nested firmware scenarios).
#   libpam0g-dev and libclang-dev: kapsel-api checks realm `pam` passwords through libpam (pam-sys
#   makes its bindings with bindgen, which needs libclang).
set -euo pipefail

PACKAGES=(gcc libc6-dev make libpam0g-dev libclang-dev qemu-system-x86 qemu-utils busybox-static kmod cpio xz-utils zstd lz4
          iproute2 nftables ca-certificates runc crun debootstrap attr
          podman conmon netavark aardvark-dns containerd docker.io libseccomp-dev pkg-config
          seabios ovmf grub-pc-bin grub-common xorriso mtools)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's qemu-system-x86 replaces a newer qemu-utils (from backports) by
# removing it: put back the one that matches, so that qemu-img is there.
if ! command -v qemu-img >/dev/null 2>&1; then
    echo "setup: installing qemu-utils again (qemu-img is missing)"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null
fi

# kapseld's DHCP helper runs as this system user (kapsel(8), USERS), as
# vmd's children run as _vmd; Debian names new system users with a leading
# underscore. Without it the helper runs as nobody, with a warning.
if ! getent passwd _kapsel-dhcp >/dev/null; then
    echo "setup: creating the system user _kapsel-dhcp"
    if command -v adduser >/dev/null 2>&1; then
        $SUDO adduser --system --group --no-create-home --home /nonexistent \
            --shell /usr/sbin/nologin --quiet _kapsel-dhcp
    else
        $SUDO useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin _kapsel-dhcp
    fi
fi

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "setup: installing Rust from Debian (cargo, rustc)"
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cargo rustc >/dev/null
    fi
fi
echo "setup: ready ($(cargo --version))"
